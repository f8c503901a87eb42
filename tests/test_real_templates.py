"""Masks on the chat templates real models ship (tests/fixtures/templates/real, sources in its
README): every trained turn is inference-faithful, ends with a stop token, and holds no prompt text.

Each template runs on a stand-in tokenizer: SmolLM2's, with the model's control tokens added and a
generation_config.json naming its stop tokens (tests/fixtures/templates/real/models.json). The
oracle for "inference-faithful" is transformers' own `apply_chat_template(messages[:i],
add_generation_prompt=True)`: the text before every trained span must be exactly that prompt.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sftpack.errors import SftpackError
from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.masking import MaskOptions, encode_batch
from sftpack.templates.tokenizer import load_tokenizer

from conftest import MODELS, transformers_tokenizer

SYSTEM = {"role": "system", "content": "You are terse."}
U1, A1 = {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hi there!"}
U2, A2 = {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}
R1 = dict(A1, reasoning_content="They want a greeting.")
R2 = dict(A2, content="<think>\nFrance has one capital.\n</think>\n\nParis.")  # the inline form
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]}
RESULT = {"role": "tool", "tool_call_id": "call00001", "content": "Sunny, 21 C"}
ANSWER = {"role": "assistant", "content": "It is sunny in Lyon."}
CONVERSATIONS = {
    "single": [U1, A1],
    "multi": [U1, A1, U2, A2],
    "system": [SYSTEM, U1, A1, U2, A2],
    "reasoning": [U1, R1, U2, R2],
    "tools": [{"role": "user", "content": "Weather in Lyon?"}, CALL, RESULT, ANSWER],
}
PROMPT_TEXTS = ("Say hello.", "Capital of France?", "You are terse.", "Weather in Lyon?", "Sunny, 21 C")
REFUSED = {("gemma2", "system"), ("gemma2", "tools"), ("gemma3", "tools")}
"""Conversations the template itself rejects (raise_exception): dropped as template_error."""
RENDERS_TOOL_CALLS = {"command_r7b", "deepseek_r1_distill", "deepseek_v3_1", "glm4_5", "gpt_oss", "hermes_tool_use",
                      "llama3_1", "llama3_2", "llama3_3", "mistral_nemo", "mistral_small_3_1", "nemotron_nano_v2",
                      "qwen2_5", "qwen3", "seed_oss", "minimax_m2", "lfm2_5", "nemotron_super_v1_5", "gemma4"}
"""Templates that render assistant tool_calls (the other tool-capable ones, Granite 3.x, Kimi-K2 and
Phi-4-mini, declare tools but drop the calls, and Kimi-K2-Thinking writes the call's id, not its
name: such turns must stay untrained and be counted)."""


def encode(tokenizer, renderer, name, kind, **options):
    messages = copy.deepcopy(CONVERSATIONS[kind])
    tools = TOOLS if kind == "tools" else None  # Hermes iterates tools: the renderer gives it [] (probe-found)
    return encode_batch(renderer, tokenizer, [{"messages": messages, "tools": tools}], MaskOptions(**options))[0]


def reference_prompt(tokenizer, renderer, name, kind, i) -> str:
    messages = copy.deepcopy(CONVERSATIONS[kind])
    for message in messages:  # in the form the template reads (DeepSeek concatenates strings)
        for call in message.get("tool_calls") or []:
            if renderer.arguments_as_string:
                call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    tools = TOOLS if kind == "tools" else ([] if name == "hermes_tool_use" else None)
    return transformers_tokenizer(tokenizer.name_or_path).apply_chat_template(
        messages[:i], tools=tools, chat_template=renderer.template, add_generation_prompt=True, tokenize=False)


def trained_turns(example) -> list[tuple[str, str]]:
    """(text before the turn, trained text of the turn) per trained turn, in conversation order;
    a turn whose reasoning is masked counts as one (its pieces joined)."""
    turns = []
    for sequence in example.sequences:
        text, spans = sequence.text, sequence.trained_spans
        merged: list[list[int]] = []
        for start, end in spans:
            stop = any(text[merged[-1][0]:merged[-1][1]].endswith(t) for t in ("</s>",)) if merged else True
            if merged and not stop and "<|" not in text[merged[-1][1]:start] and len(text[merged[-1][1]:start]) < 200 \
                    and not any(p in text[merged[-1][1]:start] for p in PROMPT_TEXTS):
                merged[-1][1] = end  # the masked reasoning between two pieces of one turn
            else:
                merged.append([start, end])
        turns += [(text[:s], text[s:e]) for s, e in merged]
    return sorted(turns, key=lambda turn: len(turn[0]))


def assert_tokens_consistent(tokenizer, example):
    for sequence in example.sequences:
        reference = transformers_tokenizer(tokenizer.name_or_path)
        assert sequence.input_ids.tolist() == reference(sequence.text, add_special_tokens=False).input_ids
        trained = sequence.labels != -100
        assert (sequence.labels[trained] == sequence.input_ids[trained]).all()


CASES = [(name, kind) for name in sorted(MODELS) for kind in CONVERSATIONS]


@pytest.mark.parametrize("name, kind", CASES)
def test_every_trained_turn_is_inference_faithful_and_stops(stand_in, name, kind):
    tokenizer, renderer = stand_in(name)
    example = encode(tokenizer, renderer, name, kind)
    if (name, kind) in REFUSED:
        assert example.reason == "template_error", example.error
        return
    assert example.error is None, example.error
    assert_tokens_consistent(tokenizer, example)
    messages = CONVERSATIONS[kind]
    expected = [i for i, m in enumerate(messages) if m["role"] == "assistant"
                and not (m.get("tool_calls") and name not in RENDERS_TOOL_CALLS)]
    turns = trained_turns(example)
    assert len(turns) == len(expected), turns
    stops = tuple(MODELS[name]["stop_tokens"])
    for i, (before, trained) in zip(expected, turns):
        assert before == reference_prompt(tokenizer, renderer, name, kind, i)  # what the model is given
        assert trained.endswith(stops), trained  # ... and it learns to stop
        assert not any(p in trained for p in PROMPT_TEXTS), trained
        answer = messages[i]["content"].split("</think>")[-1].strip()
        assert answer in trained
        for call in messages[i].get("tool_calls") or []:
            assert call["function"]["name"] in trained and "Lyon" in trained
    audit = example.audit
    assert audit.get("spans_with_role_header", 0) == 0 and audit.get("turns_without_stop", 0) == 0
    assert audit.get("tool_calls_not_rendered", 0) == (kind == "tools" and name not in RENDERS_TOOL_CALLS)
    sequences = example.sequences
    assert (len(sequences) > 1) == bool(audit.get("split_conversations"))
    for sequence in sequences:  # every sequence ends with the turn it trains last: nothing after
        assert sequence.text[: sequence.trained_spans[-1][1]].endswith(stops) or sequence.text == renderer.render(
            messages, TOOLS if kind == "tools" else ([] if name == "hermes_tool_use" else None))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reasoning_train_mask_drop(stand_in, name):
    tokenizer, renderer = stand_in(name)
    thoughts = ("They want a greeting.", "France has one capital.")
    train, mask, drop = (encode(tokenizer, renderer, name, "reasoning", reasoning=mode)
                         for mode in ("train", "mask", "drop"))
    for example in (train, mask, drop):
        assert example.error is None, example.error
        assert_tokens_consistent(tokenizer, example)
    rendered = [t for t in thoughts if any(t in s.text for s in train.sequences)]
    assert train.audit.get("reasoning_not_rendered", 0) == len(thoughts) - len(rendered)
    trained_text = "".join(t for _, t in trained_turns(train))
    assert all(t in trained_text for t in rendered)  # auto: rendered reasoning is trained, every turn
    masked_text = "".join(s.text[a:b] for s in mask.sequences for a, b in s.trained_spans)
    assert not any(t in masked_text for t in thoughts)
    assert all(any(t in s.text for s in mask.sequences) for t in rendered)
    assert not any(t in s.text for s in drop.sequences for t in thoughts)
    assert drop.audit.get("reasoning_not_rendered", 0) == 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_trains_the_full_rendering_and_counts_what_differs(stand_in, name):
    tokenizer, renderer = stand_in(name)
    for kind in ("multi", "reasoning"):
        auto = encode(tokenizer, renderer, name, kind)
        whole = encode(tokenizer, renderer, name, kind, turns="whole")
        assert whole.error is None and len(whole.sequences) == 1
        [sequence] = whole.sequences
        assert sequence.text == renderer.render(CONVERSATIONS[kind], [] if name == "hermes_tool_use" else None)
        pieces = [sequence.text[a:b] for a, b in sequence.trained_spans]
        # gpt-oss ends earlier answers with <|end|> in the full rendering: trained as S writes them
        ends = tuple(MODELS[name]["stop_tokens"]) + (("<|end|>",) if name == "gpt_oss" else ())
        assert len(pieces) == 2 and all(p.endswith(ends) or name == "glm4_5" for p in pieces)
        assert not any(text in p for p in pieces for text in PROMPT_TEXTS), pieces  # no user turn trained
        assert whole.audit.get("assistant_text_not_trained", 0) == 0
        differs = whole.audit.get("turns_rendered_differently", 0)
        as_auto = len(auto.sequences) == 1 and auto.sequences[0].text == sequence.text
        assert (differs > 0) == (not as_auto), (auto.audit, whole.audit)


# ---------------------------------------------------------------- exact goldens for the hard cases

def pieces(example) -> list[list[str]]:
    return [[s.text[a:b] for a, b in s.trained_spans] for s in example.sequences]


def test_qwen3_reasoning_becomes_one_sequence_per_turn(stand_in):
    tokenizer, renderer = stand_in("qwen3")
    example = encode(tokenizer, renderer, "qwen3", "reasoning")
    assert pieces(example) == [["<think>\nThey want a greeting.\n</think>\n\nHi there!<|im_end|>"],
                               ["<think>\nFrance has one capital.\n</think>\n\nParis.<|im_end|>"]]
    first, full = example.sequences
    assert first.text == ("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
                          "<think>\nThey want a greeting.\n</think>\n\nHi there!<|im_end|>")
    assert "They want a greeting." not in full.text  # Qwen3 strips it once a later user turn follows
    assert example.audit["split_extra_tokens"] == first.input_ids.size


def test_gpt_oss_trains_return_and_call(stand_in):
    tokenizer, renderer = stand_in("gpt_oss")
    reasoning = pieces(encode(tokenizer, renderer, "gpt_oss", "reasoning"))
    assert reasoning[0] == ["<|channel|>analysis<|message|>They want a greeting.<|end|><|start|>assistant"
                            "<|channel|>final<|message|>Hi there!<|return|>"]
    tools = [p for seq in pieces(encode(tokenizer, renderer, "gpt_oss", "tools")) for p in seq]
    assert any(p.endswith('{"city": "Lyon"}<|call|>') for p in tools)


def test_command_r7b_never_trains_the_next_turn_opener(stand_in):
    tokenizer, renderer = stand_in("command_r7b")
    example = encode(tokenizer, renderer, "command_r7b", "multi")
    assert pieces(example) == [["<|START_RESPONSE|>Hi there!<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
                                "<|START_RESPONSE|>Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]]


def test_r1_continues_the_think_block_its_prompt_opens(stand_in):
    tokenizer, renderer = stand_in("deepseek_r1_distill")
    example = encode(tokenizer, renderer, "deepseek_r1_distill", "reasoning")
    assert pieces(example) == [["They want a greeting.\n</think>\n\nHi there!<｜end▁of▁sentence｜>"],
                               ["France has one capital.\n</think>\n\nParis.<｜end▁of▁sentence｜>"]]
    assert example.sequences[0].text.endswith("<｜Assistant｜><think>\nThey want a greeting.\n</think>\n\n"
                                              "Hi there!<｜end▁of▁sentence｜>")


def test_mistral_nemo_system_prompt_is_trained_where_inference_puts_it(stand_in):
    tokenizer, renderer = stand_in("mistral_nemo")
    first, second = encode(tokenizer, renderer, "mistral_nemo", "system").sequences
    assert first.text == "<s>[INST]You are terse.\n\nSay hello.[/INST]Hi there!</s>"
    assert second.text.endswith("[INST]You are terse.\n\nCapital of France?[/INST]Paris.</s>")


def test_glm_turns_end_with_the_marker_that_follows(stand_in):
    tokenizer, renderer = stand_in("glm4_5")
    trained = [p for seq in pieces(encode(tokenizer, renderer, "glm4_5", "tools")) for p in seq]
    assert trained[0].endswith("</tool_call><|observation|>")
    assert trained[-1] == "\n<think></think>\nIt is sunny in Lyon.<|user|>"


def test_llama3_ignores_reasoning_and_says_so(stand_in):
    tokenizer, renderer = stand_in("llama3_1")
    example = encode(tokenizer, renderer, "llama3_1", "reasoning")
    assert pieces(example) == [["Hi there!<|eot_id|>", "Paris.<|eot_id|>"]]
    assert example.audit == {"reasoning_not_rendered": 2}


# ---------------------------------------------------------------- stop markers without generation_config.json

@pytest.mark.parametrize("name", sorted(MODELS))
def test_stop_markers_inferred_from_the_rendering_give_the_same_masks(stand_in, name):
    """A folder without generation_config.json (what save_pretrained writes): the markers inferred
    from the template's own rendering are the model's, and every mask equals the one with the file."""
    tokenizer, renderer = stand_in(name)
    bare_tokenizer, bare = stand_in(name, generation_config=False)
    assert renderer.stop.source == "generation_config" and bare.stop.source == "inferred"
    assert set(bare.stop_markers) <= set(MODELS[name]["stop_tokens"]) | {bare_tokenizer.eos_token}
    for kind in CONVERSATIONS:
        with_file = encode(tokenizer, renderer, name, kind)
        without = encode(bare_tokenizer, bare, name, kind)
        assert pieces(without) == pieces(with_file) and without.audit == with_file.audit, kind
        assert without.audit.get("assistant_text_not_trained", 0) == 0


def test_gpt_oss_without_generation_config_trains_every_final_answer(stand_in):
    """The issue's case: <|end|> sits between the analysis and the final message of one turn, so it
    is no stop marker; with --reasoning mask every answer is still trained."""
    tokenizer, renderer = stand_in("gpt_oss", generation_config=False)
    assert renderer.stop.as_manifest() == {"tokens": ["<|call|>", "<|return|>"], "source": "inferred"}
    masked = encode(tokenizer, renderer, "gpt_oss", "reasoning", reasoning="mask")
    assert pieces(masked) == [["<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final"
                               "<|message|>Hi there!<|return|>"],
                              ["<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final"
                               "<|message|>Paris.<|return|>"]]
    assert masked.audit.get("assistant_text_not_trained", 0) == 0


def test_given_stop_tokens_win_and_unknown_ones_are_refused(stand_in):
    tokenizer, renderer = stand_in("gpt_oss", generation_config=False, stop_tokens=["<|return|>"])
    assert renderer.stop.as_manifest() == {"tokens": ["<|return|>"], "source": "stop_tokens"}
    with pytest.raises(SftpackError, match="not tokens of the tokenizer"):
        ChatRenderer(tokenizer, renderer.template, stop_tokens=["<|no such token|>"])


# ---------------------------------------------------------------- goldens for 2025-2026 templates

def test_minimax_m2_plain_turns_close_the_think_block_its_prompt_opens(stand_in):
    tokenizer, renderer = stand_in("minimax_m2")
    assert pieces(encode(tokenizer, renderer, "minimax_m2", "multi")) == [["\n</think>\n\nHi there![e~["],
                                                                          ["\n</think>\n\nParis.[e~["]]
    assert pieces(encode(tokenizer, renderer, "minimax_m2", "reasoning"))[0] == [
        "They want a greeting.\n</think>\n\nHi there![e~["]


def test_gemma4_trains_each_turn_after_the_empty_thought_channel(stand_in):
    tokenizer, renderer = stand_in("gemma4", generation_config=False)
    assert renderer.stop_markers == ("<turn|>", "<eos>")  # <turn|> is learnt from the rendering
    example = encode(tokenizer, renderer, "gemma4", "system")
    assert pieces(example) == [["Hi there!<turn|>"], ["Paris.<turn|>"]]
    assert example.sequences[0].text.endswith("<|turn>model\n<|channel>thought\n<channel|>Hi there!<turn|>")


def test_seed_oss_and_lfm2_5_tool_calls(stand_in):
    seed = pieces(encode(*stand_in("seed_oss"), "seed_oss", "tools"))
    assert seed == [["<seed:tool_call>\n<function=get_weather>\n<parameter=city>Lyon</parameter>\n</function>\n"
                     "</seed:tool_call><seed:eos>", "It is sunny in Lyon.<seed:eos>"]]
    lfm = pieces(encode(*stand_in("lfm2_5"), "lfm2_5", "tools"))
    assert lfm == [["<|tool_call_start|>[get_weather(city='Lyon')]<|tool_call_end|><|im_end|>",
                    "It is sunny in Lyon.<|im_end|>"]]
