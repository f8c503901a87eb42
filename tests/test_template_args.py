"""Template arguments, per-turn train flags, stop markers without generation_config.json, and the
fingerprint covering the options among them (a per-turn flag is in the input's bytes) (issue 22).

Template arguments are checked against transformers' own `apply_chat_template(..., **kwargs)`: the
text before every trained span is exactly the prompt the model is given with those arguments.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest

import sftpack
from conftest import FIXTURES, REAL_TEMPLATES, transformers_tokenizer
from sftpack.checks.messages import check_conversation, schema_errors
from sftpack.cli import main as cli
from sftpack.cli.data_options import template_args
from sftpack.errors import SftpackError
from sftpack.packing.stage import pack_warnings
from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.masking import IGNORE_INDEX, MaskOptions, encode_batch

PLAIN = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hi there!"},
         {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]


def pieces(example) -> list[list[str]]:
    return [[s.text[a:b] for a, b in s.trained_spans] for s in example.sequences]


def encode_one(renderer, tokenizer, messages, **fields):
    [example] = encode_batch(renderer, tokenizer, [{"messages": copy.deepcopy(messages), **fields}], MaskOptions())
    assert example.error is None, example.error
    return example


# ---------------------------------------------------------------- template arguments

def test_qwen3_enable_thinking_false_trains_the_answers_as_the_template_renders_them(stand_in):
    tokenizer, renderer = stand_in("qwen3")
    assert pieces(encode_one(renderer, tokenizer, PLAIN)) == [["<think>\n\n</think>\n\nHi there!<|im_end|>"],
                                                              ["<think>\n\n</think>\n\nParis.<|im_end|>"]]
    off = encode_one(renderer, tokenizer, PLAIN, chat_template_kwargs={"enable_thinking": False})
    assert pieces(off) == [["Hi there!<|im_end|>"], ["Paris.<|im_end|>"]]
    for sequence, i in zip(off.sequences, (1, 3)):  # after exactly the prompt the model is given
        prompt = transformers_tokenizer(tokenizer.name_or_path).apply_chat_template(
            PLAIN[:i], chat_template=renderer.template, add_generation_prompt=True, tokenize=False,
            enable_thinking=False)
        assert sequence.text[: sequence.trained_spans[0][0]] == prompt
        assert prompt.endswith("<think>\n\n</think>\n\n")
    assert off.audit.get("assistant_text_not_trained", 0) == 0


def test_a_records_template_arguments_win_over_the_configs(stand_in):
    tokenizer, renderer = stand_in("qwen3", template_kwargs={"enable_thinking": False})
    assert pieces(encode_one(renderer, tokenizer, PLAIN)) == [["Hi there!<|im_end|>"], ["Paris.<|im_end|>"]]
    back_on = encode_one(renderer, tokenizer, PLAIN, chat_template_kwargs={"enable_thinking": True})
    assert pieces(back_on)[0] == ["<think>\n\n</think>\n\nHi there!<|im_end|>"]


def test_gpt_oss_reasoning_effort_shows_in_the_system_text(stand_in):
    tokenizer, renderer = stand_in("gpt_oss", template_kwargs={"reasoning_effort": "high"})
    example = encode_one(renderer, tokenizer, PLAIN)
    assert all("\nReasoning: high\n" in s.text for s in example.sequences)
    low = encode_one(renderer, tokenizer, PLAIN, chat_template_kwargs={"reasoning_effort": "low"})
    assert all("\nReasoning: low\n" in s.text for s in low.sequences)
    assert pieces(example) == pieces(low)  # the system text is prompt, never trained


def test_a_template_that_needs_a_variable_works_once_it_is_given(smol_tokenizer):
    renderer = ChatRenderer(smol_tokenizer, (FIXTURES / "templates" / "needs_variable.jinja").read_text())
    conversation = {"id": "c1", "messages": PLAIN[:2]}
    [refused] = encode_batch(renderer, smol_tokenizer, [conversation])
    assert refused.reason == "template_error" and "conversation 'c1'" in refused.error and "today" in refused.error
    given = encode_one(renderer, smol_tokenizer, PLAIN, chat_template_kwargs={"today": "1 May 2026"})
    assert given.sequences[0].text.startswith("<|im_start|>system\nToday is 1 May 2026.<|im_end|>")
    assert pieces(given) == [["Hi there!<|im_end|>", "Paris.<|im_end|>"]]
    everywhere = ChatRenderer(smol_tokenizer, renderer.template, template_kwargs={"today": "2 May 2026"})
    assert pieces(encode_one(everywhere, smol_tokenizer, PLAIN)) == pieces(given)  # skeletons render with it too
    with pytest.raises(SftpackError, match="messages"):
        ChatRenderer(smol_tokenizer, renderer.template, template_kwargs={"messages": []})


def test_a_refusal_names_the_template_argument_that_makes_it_render(smol_tokenizer):
    """A template that reads `functions` (none given: it raises) and one whose generation prompt opens a
    think block plain turns lack: the message names the argument that makes the conversation render
    and mask exactly, and nothing is applied until the user passes it. A variable that no probe
    fills (needs_variable's `today`) gets no guess."""
    from sftpack.checks.messages import template_check

    conversation = {"id": "c1", "messages": PLAIN[:2]}
    for name, argument, value in (("reads_functions", "functions", []), ("think_prompt", "enable_thinking", False)):
        renderer = ChatRenderer(smol_tokenizer, (FIXTURES / "templates" / f"{name}.jinja").read_text())
        [refused] = encode_batch(renderer, smol_tokenizer, [conversation])
        shown = json.dumps(value)
        assert refused.error is not None and refused.error.endswith(
            f"with the template argument {argument}={shown} it renders and masks exactly: pass --template-arg "
            f"{argument}={shown} (data.chat_template_kwargs: {{{argument}: {shown}}}) if that is how the model is "
            "prompted"), refused.error
        assert renderer.template_kwargs == {}  # not applied
        given = encode_one(renderer, smol_tokenizer, PLAIN, chat_template_kwargs={argument: value})
        assert pieces(given) in ([["Hi there!<|im_end|>", "Paris.<|im_end|>"]], [["Hi there!<|im_end|>"], ["Paris.<|im_end|>"]])
        prompt = smol_tokenizer.apply_chat_template(PLAIN[:1], chat_template=renderer.template, add_generation_prompt=True,
                                                    tokenize=False, **{argument: value})
        assert given.sequences[0].text.startswith(prompt) and "Hi there!" not in prompt
        [error] = template_check(renderer)({"messages": PLAIN}) if name == "reads_functions" else [None]
        assert error is None or f"--template-arg {argument}={shown}" in error.message
    renderer = ChatRenderer(smol_tokenizer, (FIXTURES / "templates" / "needs_variable.jinja").read_text())
    [refused] = encode_batch(renderer, smol_tokenizer, [conversation])
    assert "'today' is undefined" in refused.error and "--template-arg" not in refused.error


def test_template_arg_values_are_json_when_they_parse():
    assert template_args(["enable_thinking=false", "reasoning_effort=high", "n=3", 'tools=["a"]', "s=\"x\""]) == {
        "enable_thinking": False, "reasoning_effort": "high", "n": 3, "tools": ["a"], "s": "x"}
    with pytest.raises(SftpackError, match="KEY=VALUE"):
        template_args(["enable_thinking"])


# ---------------------------------------------------------------- per-turn train flags

def test_train_false_leaves_that_turn_untrained_even_with_train_on_all(smol_tokenizer):
    renderer = ChatRenderer(smol_tokenizer)
    flagged = copy.deepcopy(PLAIN)
    flagged[1]["train"] = False
    example = encode_one(renderer, smol_tokenizer, flagged)
    plain = encode_one(renderer, smol_tokenizer, PLAIN)
    assert pieces(example) == [["Paris.<|im_end|>"]] and pieces(plain) == [["Hi there!<|im_end|>", "Paris.<|im_end|>"]]
    assert example.sequences[0].input_ids.tolist() == plain.sequences[0].input_ids.tolist()  # same text
    assert example.audit == {"turns_marked_untrained": 1}


REASONING = [PLAIN[0], {**PLAIN[1], "reasoning_content": "They want a greeting."}, PLAIN[2],
             {**PLAIN[3], "content": "<think>\nFrance has one capital.\n</think>\n\nParis."}]


@pytest.mark.parametrize("name", ["qwen3", "gpt_oss"])
def test_train_false_on_templates_that_split_conversations(stand_in, name):
    """Qwen3 strips earlier reasoning and gpt-oss ends earlier answers with <|end|>, so the
    conversation is two sequences, one per turn. A turn marked false needs no sequence of its own:
    the other turn is trained in the one it needs, and nothing else. Under --train-on last only the
    final turn is a target: a false one there leaves nothing (never the turn before)."""
    tokenizer, renderer = stand_in(name)

    def encode(flagged=(), train_on="all"):
        messages = copy.deepcopy(REASONING)
        for i in flagged:
            messages[i]["train"] = False
        [example] = encode_batch(renderer, tokenizer, [{"messages": messages}], MaskOptions(train_on=train_on))
        assert example.error is None, example.error
        return [s.text for s in example.sequences], pieces(example), example.audit

    (first, full), (trains_first, trains_second), audit = encode()
    assert audit["split_conversations"] == 1 and "They want a greeting." in trains_first[0]
    assert "They want a greeting." in first and "They want a greeting." not in full  # hence the split
    assert encode([1]) == ([full], [trains_second], {"turns_marked_untrained": 1})
    assert encode([3]) == ([first], [trains_first], {"turns_marked_untrained": 1})
    assert encode(train_on="last") == ([full], [trains_second], {})
    assert encode([1], "last") == ([full], [trains_second], {"turns_marked_untrained": 1})
    assert encode([3], "last") == ([full], [[]], {"turns_marked_untrained": 1})


def test_a_train_false_turn_packs_the_same_tokens_with_that_turn_untrained(model_dir, smol_tokenizer, tmp_path):
    """Through pack: the flagged conversation's row holds the same input_ids as the unflagged one's,
    and its labels differ exactly on the flagged turn's tokens. Under --train-on last a flag on an
    earlier turn changes nothing, and one on the final turn leaves nothing to train: the
    conversation is dropped as no_trained_tokens."""
    first, last = copy.deepcopy(PLAIN), copy.deepcopy(PLAIN)
    first[1]["train"], last[3]["train"] = False, False
    data = _write(tmp_path / "flags.jsonl", [{"id": "plain", "messages": PLAIN}, {"id": "first", "messages": first},
                                             {"id": "last", "messages": last}])

    def rows(train_on):
        folder = sftpack.pack([data], tmp_path / "packed", tokenizer=str(model_dir), strategy="none",
                              train_on=train_on)
        table = folder.dataset()
        return folder.totals, {ids[0]: (row["input_ids"], row["labels"]) for row, ids in zip(table, table["example_ids"])}

    totals, packed = rows("all")
    assert totals["audit"]["turns_marked_untrained"] == 2 and totals["dropped"] == {}
    ids, plain_labels = packed["plain"]
    for key, untrained in (("first", "Hi there!<|im_end|>"), ("last", "Paris.<|im_end|>")):
        assert packed[key][0] == ids
        labels = packed[key][1]
        assert all(b == IGNORE_INDEX for a, b in zip(plain_labels, labels) if a != b), key
        assert smol_tokenizer.decode([t for t, a, b in zip(ids, plain_labels, labels) if a != b]) == untrained, key
    totals, packed = rows("last")
    assert set(packed) == {"plain", "first"} and packed["first"] == packed["plain"]
    assert totals["dropped"] == {"no_trained_tokens": 1} and totals["audit"]["examples_without_trained_tokens"] == 1


def test_train_flag_is_a_boolean_on_assistant_turns_only():
    record = {"messages": copy.deepcopy(PLAIN)}
    record["messages"][1]["train"] = "no"
    assert [(e.rule, e.path) for e in schema_errors(record)] == [("schema_type", "/messages/1/train")]
    record["messages"][1]["train"] = False
    record["messages"][0]["train"] = True
    assert schema_errors(record) == []
    assert [(e.rule, e.path) for e in check_conversation(record)] == [("train_not_assistant", "/messages/0/train")]
    assert [(e.rule, e.path) for e in schema_errors({"messages": PLAIN, "chat_template_kwargs": 1})] == [
        ("schema_type", "/chat_template_kwargs")]


# ---------------------------------------------------------------- pack: stop markers, fingerprint, summary

def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_everything_that_changes_the_masks_changes_the_fingerprint(model_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    data = _write(tmp_path / "a.jsonl", [{"id": f"c{k}", "messages": PLAIN} for k in range(3)])
    out = tmp_path / "packed"
    base = sftpack.pack([data], out, tokenizer=str(folder))
    assert base.manifest["tokenizer"]["stop_markers"]["source"] == "generation_config"
    assert sftpack.pack([data], out, tokenizer=str(folder)).manifest["reused"]
    seen = {base.path.name}
    (folder / "generation_config.json").rename(tmp_path / "generation_config.json")
    inferred = sftpack.pack([data], out, tokenizer=str(folder))
    assert inferred.manifest["tokenizer"]["stop_markers"] == {"tokens": ["<|im_end|>"], "source": "inferred"}
    [warning] = pack_warnings(inferred.manifest)
    assert "<|im_end|>" in warning and "--stop-tokens" in warning
    given = sftpack.pack([data], out, tokenizer=str(folder), stop_tokens=["<|im_end|>", "<|endoftext|>"])
    assert given.manifest["tokenizer"]["stop_markers"]["source"] == "stop_tokens" and not pack_warnings(given.manifest)
    kwargs = sftpack.pack([data], out, tokenizer=str(folder), chat_template_kwargs={"enable_thinking": False})
    for packed in (inferred, given, kwargs):  # a per-turn train flag is in the input's bytes: see below
        assert not packed.manifest["reused"] and packed.path.name not in seen
        seen.add(packed.path.name)
        assert packed.totals["audit"]["assistant_text_not_trained"] == 0


def test_pack_without_generation_config_warns_and_trains_gpt_oss_answers(stand_in, tmp_path, capsys):
    """The issue's case through the command line: a gpt-oss folder as save_pretrained writes it."""
    tokenizer, _ = stand_in("gpt_oss", generation_config=False)
    reasoning = copy.deepcopy(PLAIN)
    reasoning[1]["reasoning_content"] = "They want a greeting."
    data = _write(tmp_path / "r.jsonl", [{"id": "r", "messages": reasoning}])
    assert cli(["pack", str(data), "--out-dir", str(tmp_path / "out"), "--tokenizer", tokenizer.name_or_path,
                "--chat-template", str(REAL_TEMPLATES / "gpt_oss.jinja"), "--reasoning", "mask",
                "--template-arg", "reasoning_effort=high"]) == 0
    captured = capsys.readouterr()
    assert "assistant text not trained 0" in captured.out
    assert "inferred from the chat template's rendering: <|call|>, <|return|>" in captured.err
    manifest = json.loads((tmp_path / "out" / captured.out.strip().splitlines()[-1] / "manifest.json").read_text())
    assert manifest["options"]["chat_template_kwargs"] == {"reasoning_effort": "high"}
    assert manifest["totals"]["audit"]["assistant_text_not_trained"] == 0


# ---------------------------------------------------------------- template forms found by probe renders

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}
TOOL_CHAT = [{"role": "user", "content": "Weather in Lyon?"},
             {"role": "assistant", "content": "", "tool_calls": [CALL]},
             {"role": "tool", "tool_call_id": "call00001", "content": "Sunny"},
             {"role": "assistant", "content": "It is sunny in Lyon."}]


def test_bare_tool_schemas_and_an_empty_tools_list_are_given_where_the_template_reads_them(smol_tokenizer):
    renderer = ChatRenderer(smol_tokenizer, (FIXTURES / "templates" / "bare_tools.jinja").read_text())
    assert renderer.forms.bare_tool_schemas and renderer.forms.tools_when_none == []
    tools = encode_one(renderer, smol_tokenizer, TOOL_CHAT, tools=WEATHER)
    assert "- get_weather: Weather in a city" in tools.sequences[0].text
    assert pieces(tools) == [['<tool_call>get_weather {"city": "Lyon"}</tool_call><|im_end|>',
                              "It is sunny in Lyon.<|im_end|>"]]
    plain = encode_one(renderer, smol_tokenizer, PLAIN)  # no tools: the template iterates [], not None
    assert plain.sequences[0].text.startswith("<|im_start|>system\nTools:<|im_end|>")
    assert ChatRenderer(smol_tokenizer).forms.tools_when_none is None  # SmolLM2's own: None, wrapped


def test_reasoning_is_given_as_typed_chunks_where_the_template_reads_it_that_way(smol_tokenizer):
    renderer = ChatRenderer(smol_tokenizer, (FIXTURES / "templates" / "thinking_chunks.jinja").read_text())
    assert renderer.forms.reasoning_chunks
    reasoning = copy.deepcopy(PLAIN)
    reasoning[1]["reasoning_content"] = "They want a greeting."
    example = encode_one(renderer, smol_tokenizer, reasoning)
    assert pieces(example) == [["[THINK]They want a greeting.[/THINK]Hi there!<|im_end|>", "Paris.<|im_end|>"]]
    assert example.audit.get("reasoning_not_rendered", 0) == 0
    [masked] = encode_batch(renderer, smol_tokenizer, [{"messages": reasoning}], MaskOptions(reasoning="mask"))
    assert pieces(masked) == [["[THINK]", "[/THINK]Hi there!<|im_end|>", "Paris.<|im_end|>"]]
    assert not ChatRenderer(smol_tokenizer).forms.reasoning_chunks  # a template printing content is not fooled


def test_config_keys_reach_pack_and_bad_ones_are_named():
    from sftpack.config.run_config import build_config
    from sftpack.packing.options import PackConfig

    raw = {"model": {"name_or_path": "m"}, "data": {"chat_template_kwargs": {"enable_thinking": False},
                                                    "stop_tokens": ["<|im_end|>"]}}
    cfg = PackConfig.from_run_config(build_config(raw))
    assert cfg.chat_template_kwargs == {"enable_thinking": False} and cfg.stop_tokens == ("<|im_end|>",)
    assert PackConfig.from_run_config(build_config({"model": {"name_or_path": "m"}, "data": {}})).stop_tokens is None
    bad = {"model": {"name_or_path": "m"}, "data": {"chat_template_kwargs": {"messages": []}, "stop_tokens": []}}
    with pytest.raises(SftpackError, match=r"(?s)data\.chat_template_kwargs.*data\.stop_tokens|"
                                           r"data\.stop_tokens.*data\.chat_template_kwargs"):
        build_config(bad)
    with pytest.raises(SftpackError, match="chat_template_kwargs"):
        PackConfig(tokenizer="m", chat_template_kwargs={"tools": []})


def test_train_validates_raw_data_with_the_template_arguments_it_packs_with(tmp_path, model_dir):
    """data.chat_template_kwargs reach train's validate step too: with a tokenizer whose template
    needs a variable, that step rejected every line while pack rendered them."""
    from sftpack.config.run_config import build_config
    from sftpack.training.data import prepare_data

    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, tokenizer / name)
    shutil.copy(FIXTURES / "templates" / "needs_variable.jinja", tokenizer / "chat_template.jinja")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": PLAIN}) + "\n" for _ in range(3)), encoding="utf-8")
    cfg = build_config({"model": {"name_or_path": str(tokenizer)},
                        "data": {"train": str(data), "out_dir": str(tmp_path / "out"),
                                 "chat_template_kwargs": {"today": "1 May 2026"}},
                        "train": {"output_dir": str(tmp_path / "run")}})
    train_dir, _ = prepare_data(cfg)
    assert json.loads((train_dir / "manifest.json").read_text())["totals"]["examples_packed"] == 3
