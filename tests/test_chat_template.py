"""Chat templating and assistant masks: golden trained text per template family, agreement with
transformers' generation-tag mask, clear errors for unmaskable templates, and the real SmolLM2
template on the real datasets (every trained token inside an assistant turn, nothing else).

Family stand-ins are the SmolLM2 tokenizer with the family's markers added as special tokens
(tests/fixtures/README.md, "Chat template fixtures").
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.masking import MaskOptions, TemplateNotMaskable, conversation_sequences, encode_batch, token_mask
from sftpack.errors import SftpackError

from conftest import read_real

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "fixtures" / "templates"
IM_END = "<|im_end|>"

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
NO_SYSTEM = CONVERSATION[1:]

# family -> (special tokens added to the SmolLM2 stand-in, conversation, trained text per turn)
FAMILIES = {
    "llama3": ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]},
               CONVERSATION, ["Hi there!<|eot_id|>", "Paris.<|eot_id|>"]),
    "mistral": ({"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": ["[INST]", "[/INST]"]},
                CONVERSATION, [" Hi there!</s>", " Paris.</s>"]),
    "gemma": ({"bos_token": "<bos>", "eos_token": "<eos>",
               "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
              NO_SYSTEM, ["Hi there!<end_of_turn>", "Paris.<end_of_turn>"]),
    "phi3": ({"eos_token": "<|endoftext|>",
              "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]},
             CONVERSATION, ["Hi there!<|end|>", "Paris.<|end|>"]),
    "zephyr": ({"eos_token": "</s>", "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]},
               CONVERSATION, ["Hi there!</s>", "Paris.</s>"]),
    "qwen2_5_tools": ({}, CONVERSATION, ["Hi there!<|im_end|>", "Paris.<|im_end|>"]),
    "chatml_generation": ({}, CONVERSATION, ["Hi there!<|im_end|>", "Paris.<|im_end|>"]),
    "smollm2": ({}, CONVERSATION, ["Hi there!<|im_end|>", "Paris.<|im_end|>"]),  # the tokenizer's own
}

GOLDEN_RENDERINGS = {
    "mistral": "<s>[INST] You are a terse assistant.\n\nHello! [/INST] Hi there!</s>"
               "[INST] What is the capital of France? [/INST] Paris.</s>",
    "gemma": "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there!<end_of_turn>\n"
             "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
             "<start_of_turn>model\nParis.<end_of_turn>\n",
    "phi3": "<|system|>\nYou are a terse assistant.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nHi there!<|end|>\n"
            "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\nParis.<|end|>\n<|endoftext|>",
    "zephyr": "<|system|>\nYou are a terse assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi there!</s>\n"
              "<|user|>\nWhat is the capital of France?</s>\n<|assistant|>\nParis.</s>\n",
    "smollm2": "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
               "<|im_start|>assistant\nHi there!<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
               "<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
}


@pytest.fixture(scope="module")
def smol(smol_tokenizer):
    """SmolLM2's tokenizer from the converted default model (conftest.py)."""
    return smol_tokenizer


@pytest.fixture(scope="module")
def family(smol):
    """family name -> (tokenizer stand-in, ChatRenderer); built once per family."""
    built = {}

    def get(name: str):
        if name not in built:
            special = FAMILIES[name][0] if name in FAMILIES else {}
            tokenizer = smol
            if special:
                tokenizer = copy.deepcopy(smol)
                tokenizer.add_special_tokens(special)
                # SmolLM2's generation_config names <|im_end|> as the stop token; a family stand-in has
                # none, so its stop markers are its eos and the known end markers it defines
                tokenizer.name_or_path = ""
            template = None if name == "smollm2" else (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
            built[name] = (tokenizer, ChatRenderer(tokenizer, template))
        return built[name]

    return get


def trained_pieces(tokenizer, example) -> list[str]:
    """Decoded text of each run of consecutive trained tokens (of a conversation's one sequence)."""
    example = single(example)
    trained = np.flatnonzero(example.labels != -100)
    runs = np.split(trained, np.flatnonzero(np.diff(trained) != 1) + 1) if trained.size else []
    return [tokenizer.decode(example.input_ids[run].tolist(), clean_up_tokenization_spaces=False) for run in runs]


def single(example):
    """The one sequence of a conversation that needs no split."""
    if hasattr(example, "sequences"):
        assert example.error is None, example.error
        assert len(example.sequences) == 1, [s.text for s in example.sequences]
        return example.sequences[0]
    return example


def assert_consistent(tokenizer, example) -> None:
    """input_ids are plain tokenization of the rendering; labels are ids or -100."""
    example = single(example)
    plain = tokenizer(example.text, add_special_tokens=False).input_ids
    assert example.input_ids.tolist() == plain
    assert example.input_ids.dtype == np.int32 and example.labels.dtype == np.int32
    trained = example.labels != -100
    assert (example.labels[trained] == example.input_ids[trained]).all()


# ---------------------------------------------------------------- golden per template family


@pytest.mark.parametrize("name", list(FAMILIES))
def test_golden_trained_text(family, name):
    tokenizer, renderer = family(name)
    _, conversation, expected = FAMILIES[name]
    full, last = (encode_batch(renderer, tokenizer, [{"messages": conversation}], MaskOptions(train_on))[0]
                  for train_on in ("all", "last"))
    for example in (full, last):
        assert_consistent(tokenizer, example)
    assert trained_pieces(tokenizer, full) == expected
    assert trained_pieces(tokenizer, last) == expected[-1:]
    if name in GOLDEN_RENDERINGS:
        assert single(full).text == GOLDEN_RENDERINGS[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_render_equals_apply_chat_template(family, name):
    tokenizer, renderer = family(name)
    conversation = FAMILIES[name][1]
    for prefix in (conversation[:-1], conversation):
        for add_generation_prompt in (False, True):
            expected = tokenizer.apply_chat_template(
                prefix, chat_template=renderer.template, add_generation_prompt=add_generation_prompt,
                tokenize=False)
            assert renderer.render(prefix, add_generation_prompt=add_generation_prompt) == expected


def test_render_passes_tools_and_tool_calls(family):
    tokenizer, renderer = family("qwen2_5_tools")
    record = read_real("glaive_toolcall_en_demo")[0]
    expected = tokenizer.apply_chat_template(record["messages"], tools=record["tools"],
                                             chat_template=renderer.template, tokenize=False)
    assert renderer.render(record["messages"], tools=record["tools"]) == expected
    assert "# Tools" in expected and "<tool_response>" in expected


def test_qwen_tool_call_turn_is_trained_as_rendered(family):
    tokenizer, renderer = family("qwen2_5_tools")
    record = read_real("glaive_toolcall_en_demo")[0]
    example = encode_batch(renderer, tokenizer, [record], MaskOptions("all"))[0]
    assert_consistent(tokenizer, example)
    pieces = trained_pieces(tokenizer, example)
    assistant = [m for m in record["messages"] if m["role"] == "assistant"]
    assert len(pieces) == len(assistant) == 4
    assert assistant[1]["content"] == "" and assistant[1]["tool_calls"]
    assert pieces[1] == ('<tool_call>\n{"name": "search_recipes", "arguments": '
                         '{"ingredients": ["chicken", "bell peppers", "rice"]}}\n</tool_call>' + IM_END)
    for index in (0, 2, 3):
        assert pieces[index] == assistant[index]["content"] + IM_END
    assert not any("tool_response" in piece or "# Tools" in piece for piece in pieces)


def test_phi3_final_eos_is_conversation_boilerplate(family):
    tokenizer, renderer = family("phi3")
    example = single(encode_batch(renderer, tokenizer, [{"messages": CONVERSATION}], MaskOptions("all"))[0])
    assert example.text.endswith("Paris.<|end|>\n<|endoftext|>")
    assert example.labels[-1] == -100 and example.labels[-2] == -100  # eos and "\n" untrained


# ---------------------------------------------------------------- generation tags


def test_masks_agree_with_generation_tags_and_transformers_mask(family):
    tokenizer, renderer = family("chatml_generation")
    conversations = [CONVERSATION] + [r["messages"] for r in read_real("fastchat_dummy_conversation")[:60]]
    examples = [single(e) for e in
                encode_batch(renderer, tokenizer, [{"messages": m} for m in conversations], MaskOptions("all"))]
    reference = tokenizer.apply_chat_template(conversations, chat_template=renderer.template, tokenize=True,
                                              return_dict=True, return_assistant_tokens_mask=True)
    for example, ids, mask in zip(examples, reference["input_ids"], reference["assistant_masks"]):
        assert_consistent(tokenizer, example)
        assert example.input_ids.tolist() == ids
        assert (example.labels != -100).astype(int).tolist() == mask


# ---------------------------------------------------------------- unmaskable templates and errors


def test_system_prompt_shown_last_is_trained_after_the_inference_prompt(family):
    tokenizer, renderer = family("bad_system_last")
    example = encode_batch(renderer, tokenizer, [{"messages": CONVERSATION}])[0]
    assert [s.text[a:b] for s in example.sequences for a, b in s.trained_spans] == FAMILIES["smollm2"][2]
    for sequence, i in zip(example.sequences, (2, 4)):  # each turn after its own prompt, system last
        start = sequence.trained_spans[0][0]
        assert sequence.text[:start] == renderer.render(CONVERSATION[:i], add_generation_prompt=True)
    assert example.audit["split_conversations"] == 1
    assert len(encode_batch(renderer, tokenizer, [{"messages": NO_SYSTEM}])[0].sequences) == 1


def test_unmaskable_template_raises_naming_the_turn(family):
    _, renderer = family("bad_generation_prompt")
    with pytest.raises(TemplateNotMaskable, match=r"conversation 'c1', assistant turn messages\[2\].*"
                                                   r"not prefix-preserving.*'<\|im_start\|>assistant\\n'.*"
                                                   r"differ at character"):
        conversation_sequences(renderer, CONVERSATION, name="conversation 'c1'")


def test_dropped_reasoning_is_split_into_faithful_sequences(family):
    tokenizer, renderer = family("bad_drop_reasoning")
    messages = copy.deepcopy(CONVERSATION)
    messages[2]["reasoning_content"] = "They greeted me."
    messages[4]["content"] = "<think>\nFrance's capital.\n</think>\n\nParis."  # the inline form
    split = encode_batch(renderer, tokenizer, [{"messages": messages}], MaskOptions("all"))[0]
    first, full = split.sequences
    assert first.text == renderer.render(messages[:2], add_generation_prompt=True) + \
        "<think>\nThey greeted me.\n</think>\n\nHi there!<|im_end|>"
    assert trained_pieces(tokenizer, first) == ["<think>\nThey greeted me.\n</think>\n\nHi there!<|im_end|>"]
    assert trained_pieces(tokenizer, full) == ["<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>"]
    assert split.audit["split_conversations"] == 1
    assert split.audit["split_extra_tokens"] == first.input_ids.size
    last = encode_batch(renderer, tokenizer, [{"messages": messages}], MaskOptions("last"))[0]
    assert trained_pieces(tokenizer, last) == ["<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>"]
    whole = encode_batch(renderer, tokenizer, [{"messages": messages}], MaskOptions("all", "whole"))[0]
    assert trained_pieces(tokenizer, whole) == ["Hi there!<|im_end|>",
                                                "<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>"]
    assert whole.audit == {"turns_rendered_differently": 1}


def test_failures_are_per_conversation(family):
    tokenizer, renderer = family("gemma")
    batch = [{"id": "ok", "messages": NO_SYSTEM}, {"id": "sys", "messages": CONVERSATION},
             {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    ok, system, alternating = encode_batch(renderer, tokenizer, batch, MaskOptions("all"))
    assert trained_pieces(tokenizer, ok) == FAMILIES["gemma"][2]
    assert system.reason == "template_error" and system.sequences == ()
    assert system.error == "conversation 'sys': the chat template failed: TemplateError: System role not supported"
    assert alternating.reason == "template_error" and "conversation #2 of the batch" in alternating.error

    _, bad = family("bad_generation_prompt")
    failed, empty = encode_batch(bad, tokenizer, [{"id": "x", "messages": CONVERSATION},
                                                  {"id": "y", "messages": CONVERSATION[:2]}], MaskOptions("all"))
    assert failed.reason == "template_not_maskable" and failed.error.startswith("conversation 'x'")
    assert empty.error is None and empty.sequences[0].trained_spans == ()  # no assistant turn: nothing to mask


def test_renderer_errors_and_identity(smol):
    with pytest.raises(SftpackError, match="chat template line 1"):
        ChatRenderer(smol, "{% for m in messages %}{{ m }")
    with pytest.raises(SftpackError, match="train_on 'first': expected one of all, last"):
        encode_batch(ChatRenderer(smol), smol, [], MaskOptions("first"))
    renderer = ChatRenderer(smol)
    assert renderer.template == smol.chat_template
    assert len(renderer.template_sha256) == 64
    assert ChatRenderer(smol, smol.chat_template + " ").template_sha256 != renderer.template_sha256


def test_token_mask_overlap_rule():
    offsets = np.array([[0, 3], [3, 5], [5, 9], [9, 9], [9, 12]])
    # token [3,5) straddles the span start (trained), [5,9) inside, [9,9) zero-width at the end
    assert token_mask(offsets, [(4, 9)]).tolist() == [False, True, True, False, False]
    assert token_mask(offsets, [(0, 1), (9, 10)]).tolist() == [True, False, False, True, True]
    assert token_mask(offsets, []).tolist() == [False] * 5


# ---------------------------------------------------------------- real template, real data


def expected_assistant_mask(text: str, token_starts: np.ndarray, messages: list[dict]) -> np.ndarray:
    """Independent oracle for SmolLM2's ChatML: find each '<|im_start|>assistant\\n' + content +
    '<|im_end|>' in order and mark the tokens starting inside content + '<|im_end|>'."""
    header = "<|im_start|>assistant\n"
    mask, cursor = np.zeros(token_starts.size, dtype=bool), 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        if message.get("tool_calls"):  # SmolLM2's template ignores tool_calls: such turns stay untrained
            continue
        target = header + message["content"] + IM_END
        found = text.index(target, cursor)
        cursor = found + len(target)
        mask |= (token_starts >= found + len(header)) & (token_starts < cursor)
    return mask


@pytest.mark.parametrize("name", ["alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo"])
def test_smollm2_template_on_real_data(smol, name):
    records = read_real(name)
    renderer = ChatRenderer(smol)
    examples = [single(e) for e in encode_batch(renderer, smol, records, MaskOptions("all"))]
    offsets = smol([e.text for e in examples], add_special_tokens=False, return_offsets_mapping=True)
    for record, example, offs in zip(records, examples, offsets["offset_mapping"]):
        assert example.text == smol.apply_chat_template(record["messages"], tools=record.get("tools"),
                                                        tokenize=False)
        assert example.input_ids.tolist() == smol(example.text, add_special_tokens=False).input_ids
        starts = np.array([start for start, _ in offs])
        trained = example.labels != -100
        assert (trained == expected_assistant_mask(example.text, starts, record["messages"])).all(), record["id"]
        assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant" and not m.get("tool_calls")]
        assert trained_pieces(smol, example) == [content + IM_END for content in assistant]


@pytest.mark.parametrize("name", ["smollm2", "llama3", "phi3", "mistral", "zephyr"])
def test_one_render_skeleton_path_equals_the_per_turn_method(family, name):
    """Conversations whose shape was learnt on placeholders are masked from one render; the result
    must be exactly what rendering every turn's prompt gives."""
    from sftpack.templates.one_render import from_skeleton
    from sftpack.templates.turn_targets import located_sequences

    tokenizer, renderer = family(name)
    records = read_real("alpaca_en_demo")[:80] + read_real("fastchat_dummy_conversation")[:80]
    records += [{"messages": [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": " x "}]}]
    used = 0
    for record in records:
        msgs, tools, thoughts = renderer.prepare(record["messages"], record.get("tools"))
        full = renderer.render(record["messages"], record.get("tools"))
        located = located_sequences(renderer, msgs, tools, thoughts, full, MaskOptions(), "c")
        fast = from_skeleton(renderer, msgs, tools, full, MaskOptions())
        if fast is not None:
            used += 1
            assert fast == located, record.get("id")
    assert used >= len(records) // 2


def test_boundary_lookup_equals_the_offsets_rule(smol):
    """Masks from a few char_to_token look-ups per span equal token_mask over every token's
    offsets, also where a character is split over several byte tokens (emoji, CJK)."""
    import itertools
    import random

    from sftpack.templates.masking import _trained_by_boundaries

    rng = random.Random(7)
    alphabet = list("ab c\n\t.,") + ["é", "日本", "🙂", "👩‍💻", "<|im_end|>", "<|im_start|>"]
    backend = smol.backend_tokenizer
    used = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, 2 * rng.randint(1, 3))))
        spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
        encoding = backend.encode(text, add_special_tokens=False)
        offsets = np.array(list(itertools.chain.from_iterable(encoding.offsets)), dtype=np.int64).reshape(-1, 2)
        fast = _trained_by_boundaries(encoding, len(encoding.ids), tuple(spans))
        if fast is not None:
            used += 1
            assert fast.tolist() == token_mask(offsets, spans).tolist(), (text, spans)
    assert used > 250
