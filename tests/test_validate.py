"""validate: every line-level, schema, conversation and template check; outputs, accounting, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftpack.checks.messages import classify_line, schema_errors
from sftpack.io.lines import parse_line
from sftpack.validation.stage import ValidateConfig, run
from sftpack.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "validate"
MIXED = FIXTURES / "mixed.jsonl"

# mixed.jsonl, line -> [(path, rule)] of its rejection (see tests/fixtures/README.md)
EXPECTED_REJECTS = {
    3: [("", "invalid_utf8")],
    4: [("", "invalid_json")],
    5: [("", "not_object")],
    6: [("", "trailing_garbage")],
    7: [("", "schema_required")],
    8: [("/messages/1/content", "schema_type")],
    9: [("/messages/0/role", "schema_enum")],
    10: [("/messages", "schema_type")],
    11: [("/messages", "no_assistant_turn")],
    12: [("/messages/1/content", "empty_assistant")],
    13: [("/messages/2/role", "system_not_first")],
    14: [("/messages/1", "tool_without_call")],
    15: [("/messages/1/role", "role_order")],
    16: [("/messages/0/role", "role_order")],
    22: [("/messages/2/role", "role_order")],
    23: [("/messages/2/role", "role_order")],
    24: [("", "invalid_json")],
    25: [("/tools/0", "schema_required")],
}
KEPT = [1, 18, 19, 20, 21, 26, 27]
BLANK = [2, 17]
CONTROL_TOKEN_LINE, SYSTEM_LINE = 20, 21


def _raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rejects(out_dir: Path, name: str = "mixed") -> dict[int, dict]:
    lines = (out_dir / f"{name}.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["line"]: r for r in map(json.loads, lines)}


def _manifest(out_dir: Path, name: str = "mixed") -> dict:
    return json.loads((out_dir / f"{name}.validate.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mixed_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed")
    run([MIXED], out, ValidateConfig())
    return out


@pytest.fixture(scope="module")
def mixed_with_tokenizer(tmp_path_factory, model_dir) -> Path:
    out = tmp_path_factory.mktemp("mixed-tok")
    run([MIXED], out, ValidateConfig(tokenizer=str(model_dir)))
    return out


@pytest.fixture(scope="module")
def no_system_tokenizer(tmp_path_factory, model_dir) -> Path:
    """SmolLM2's tokenizer with a chat template that raises on a system message."""
    out = tmp_path_factory.mktemp("no-system-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / name)
    shutil.copy(FIXTURES / "no_system.jinja", out / "chat_template.jinja")
    return out


# ---------------------------------------------------------------- every check, on real lines

def test_each_bad_line_rejected_with_rule_and_path(mixed_out):
    rejects = _rejects(mixed_out)
    got = {line: [(e["path"], e["rule"]) for e in r["errors"]] for line, r in rejects.items()}
    assert got == EXPECTED_REJECTS
    for reject in rejects.values():
        assert all(e["message"] for e in reject["errors"])


def test_reject_messages_say_what_and_how(mixed_out):
    rejects = _rejects(mixed_out)
    assert "0xe9" in rejects[3]["errors"][0]["message"]
    assert "'messages' is a required property" in rejects[7]["errors"][0]["message"]
    assert "human -> user" in rejects[9]["errors"][0]["message"]
    assert "user turn after a user turn" in rejects[15]["errors"][0]["message"]
    assert "after the start" in rejects[16]["errors"][0]["message"]
    assert "after an assistant tool call; expected tool" in rejects[22]["errors"][0]["message"]
    assert "ends with a user turn" in rejects[23]["errors"][0]["message"]
    assert "NaN" in rejects[24]["errors"][0]["message"]


def test_rejects_keep_raw_text_with_invalid_bytes_escaped(mixed_out):
    raw = _raw_lines(MIXED)
    rejects = _rejects(mixed_out)
    assert rejects[3]["raw"] == raw[2].rstrip(b"\n").decode("utf-8", errors="backslashreplace")
    assert "caf\\xe9?" in rejects[3]["raw"]
    for line, reject in rejects.items():
        if line != 3:
            assert reject["raw"].encode("utf-8") == raw[line - 1].rstrip(b"\r\n")


def test_kept_lines_are_byte_identical(mixed_out):
    raw = _raw_lines(MIXED)
    expected = b"".join(raw[n - 1] for n in KEPT)
    assert not expected.endswith(b"\n")  # the fixture's last line has no newline ...
    assert (mixed_out / "mixed.jsonl").read_bytes() == expected + b"\n"  # ... the output adds one
    assert b'"crlf"' in raw[25] and raw[25].endswith(b"\r\n")  # CRLF kept as is


def test_accounting_counters_and_warnings(mixed_out):
    manifest = _manifest(mixed_out)
    counts = manifest["counts"]
    assert (counts["read"], counts["kept"], counts["rejected"], counts["blank"]) == (27, 7, 18, 2)
    assert counts["kept"] + counts["rejected"] + counts["blank"] == counts["read"]
    rules = [rule for errors in EXPECTED_REJECTS.values() for rule in dict.fromkeys(r for _, r in errors)]
    assert {k: v for k, v in counts.items() if k.startswith("rejected_")} == {
        f"rejected_{rule}": rules.count(rule) for rule in set(rules)}
    warnings = manifest["warnings"]
    assert warnings["blank"] == {"count": 2, "first": [{"line": 2}, {"line": 17}]}
    assert warnings["duplicate"] == {"count": 1, "first": [{"line": 19, "repeats": 1}]}
    assert warnings["long_turn"]["count"] == 0
    assert manifest["input"]["sha256"] == hashlib.sha256(MIXED.read_bytes()).hexdigest()
    assert manifest["outputs"]["kept"]["sha256"] == hashlib.sha256((mixed_out / "mixed.jsonl").read_bytes()).hexdigest()
    assert manifest["options"] == {"tokenizer": None, "chat_template": None, "chat_template_kwargs": None,
                                   "max_turn_chars": 32_000, "max_errors_per_line": 20, "examples": 5,
                                   "allow_rejects": False}
    assert manifest["version"] and manifest["tokenizer"] is None


def test_long_turn_is_a_warning_with_configurable_threshold(tmp_path):
    src = tmp_path / "long.jsonl"
    lines = [{"messages": [{"role": "user", "content": "Write it out."}, {"role": "assistant", "content": "x" * n}]}
             for n in (50, 101, 3000)]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    manifest = run([src], tmp_path / "out", ValidateConfig(max_turn_chars=100))["files"][0]
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["rejected"] == 0
    assert manifest["warnings"]["long_turn"] == {"count": 2, "first": [
        {"line": 2, "path": "/messages/1/content", "chars": 101},
        {"line": 3, "path": "/messages/1/content", "chars": 3000}]}


def test_conversation_rules_for_tool_calls():
    call = {"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}

    def rules(messages):
        _, errors = classify_line(json.dumps({"messages": messages}).encode())
        return [(e.path, e.rule) for e in errors]

    user, answer = {"role": "user", "content": "go"}, {"role": "assistant", "content": "done"}
    two_calls = {"role": "assistant", "content": "", "tool_calls": [call, call]}
    result = {"role": "tool", "content": "1"}
    assert rules([user, two_calls, result, result, answer]) == []
    assert rules([user, two_calls, result, result, result, answer]) == [("/messages/4", "tool_without_call")]
    assert rules([user, two_calls]) == []  # ending on a tool call teaches the call itself
    assert rules([user, {"role": "user", "content": "x", "tool_calls": [call]}, answer]) == [
        ("/messages/1/tool_calls", "tool_calls_not_assistant"), ("/messages/1/role", "role_order")]


def test_parse_line_edge_cases():
    ok = b'{"messages": []}'
    assert parse_line(ok + b"\r\n") == ({"messages": []}, [])
    assert parse_line(b"\xef\xbb\xbf" + ok)[1][0].rule == "invalid_json"  # BOM
    assert parse_line(b"[" * 100_000)[1][0].rule == "invalid_json"  # nesting, not a crash
    assert parse_line(ok + b" " + ok)[1][0].rule == "trailing_garbage"
    assert parse_line(b'"text"')[1][0].rule == "not_object"


def test_schema_errors_in_document_order():
    bad = {"role": "user", "content": 1}
    record = {"messages": [{"role": "user", "content": "a"}] * 2 + [bad] * 9, "tools": "none"}
    paths = [e.path for e in schema_errors(record)]
    assert paths == [f"/messages/{i}/content" for i in range(2, 11)] + ["/tools"]


# ---------------------------------------------------------------- tokenizer checks

def test_control_tokens_in_content_rejected_with_tokenizer(mixed_out, mixed_with_tokenizer, model_dir):
    assert CONTROL_TOKEN_LINE not in _rejects(mixed_out)
    reject = _rejects(mixed_with_tokenizer)[CONTROL_TOKEN_LINE]
    assert [(e["path"], e["rule"]) for e in reject["errors"]] == [("/messages/0/content", "control_token")]
    assert "'<|im_end|>'" in reject["errors"][0]["message"]
    manifest = _manifest(mixed_with_tokenizer)
    assert manifest["tokenizer"] == str(model_dir) and manifest["counts"]["rejected_control_token"] == 1
    assert manifest["tokenizer_identity"]["chat_template_sha256"] == hashlib.sha256(
        (model_dir / "chat_template.jinja").read_bytes()).hexdigest()
    assert set(_rejects(mixed_with_tokenizer)) == set(EXPECTED_REJECTS) | {CONTROL_TOKEN_LINE}


def test_template_that_raises_is_a_reject_with_its_message(tmp_path, no_system_tokenizer, mixed_with_tokenizer):
    assert SYSTEM_LINE not in _rejects(mixed_with_tokenizer)  # SmolLM2's own template renders it
    run([MIXED], tmp_path, ValidateConfig(tokenizer=str(no_system_tokenizer)))
    reject = _rejects(tmp_path)[SYSTEM_LINE]
    assert [(e["path"], e["rule"]) for e in reject["errors"]] == [("/messages", "template_error")]
    assert "System role not supported" in reject["errors"][0]["message"]
    assert set(_rejects(tmp_path)) == set(EXPECTED_REJECTS) | {CONTROL_TOKEN_LINE, SYSTEM_LINE}
    # All checks run on a schema-valid line, so the other lines with a system message get it too.
    template_lines = {n for n, r in _rejects(tmp_path).items() if "template_error" in {e["rule"] for e in r["errors"]}}
    assert template_lines == {11, 13, SYSTEM_LINE}


def test_a_template_looping_over_tools_renders_records_without_tools_as_pack_does(tmp_path, model_dir):
    """hermes_tool_use loops over `tools` unguarded: apply_chat_template(tools=None) raises on any
    record, while pack renders a tool-less record with tools=[] (the template's own form). validate
    renders as pack does, so it keeps what pack packs."""
    from conftest import REAL_TEMPLATES, read_real

    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, tokenizer / name)
    shutil.copy(REAL_TEMPLATES / "hermes_tool_use.jinja", tokenizer / "chat_template.jinja")
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_real("alpaca_en_demo")[:5]), encoding="utf-8")
    result = run([data], tmp_path / "out", ValidateConfig(tokenizer=str(tokenizer)))
    assert (result["totals"]["kept"], result["totals"]["rejected"]) == (5, 0)
    import sftpack

    packed = sftpack.pack([data], tmp_path / "packed", tokenizer=str(tokenizer), max_length=2048)
    assert packed.manifest["totals"]["examples_packed"] == 5


def test_tool_calls_under_a_template_that_concatenates_arguments_are_kept_as_pack_keeps_them(tmp_path, model_dir):
    """DeepSeek V3.1's template adds `arguments` to a string: objects raise, so pack renders them as
    JSON strings; validate renders the same way and keeps what pack packs."""
    from conftest import REAL_TEMPLATES, read_real

    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_real("glaive_toolcall_en_demo")[:20]), encoding="utf-8")
    template = REAL_TEMPLATES / "deepseek_v3_1.jinja"
    result = run([data], tmp_path / "out", ValidateConfig(tokenizer=str(model_dir), chat_template=str(template)))
    assert (result["totals"]["kept"], result["totals"]["rejected"]) == (20, 0)
    import sftpack

    packed = sftpack.pack([data], tmp_path / "packed", tokenizer=str(model_dir), chat_template=str(template),
                          max_length=4096)
    assert packed.manifest["totals"]["examples_packed"] == 20


def test_the_template_check_renders_with_pack_s_template_and_arguments(tmp_path, model_dir):
    """--chat-template and --template-arg (or data.chat_template[_kwargs] in --config) make validate
    check with the template pack will render with, and its manifest names that template."""
    from conftest import read_real

    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_real("alpaca_en_demo")[:3]), encoding="utf-8")
    needs = REPO / "tests" / "fixtures" / "templates" / "needs_variable.jinja"  # raises without `today`
    base = ["validate", str(data), "--tokenizer", str(model_dir), "--chat-template", str(needs)]
    assert cli(base + ["--out-dir", str(tmp_path / "a")]) == 1
    assert {r["errors"][0]["rule"] for r in _rejects(tmp_path / "a", "plain").values()} == {"template_error"}
    assert cli(base + ["--out-dir", str(tmp_path / "b"), "--template-arg", "today=1 May 2026"]) == 0
    manifest = json.loads((tmp_path / "b" / "plain.validate.json").read_text())
    assert manifest["tokenizer_identity"]["chat_template_sha256"] == hashlib.sha256(needs.read_bytes()).hexdigest()
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": {"name_or_path": str(model_dir)},
                                  "data": {"chat_template": str(needs), "chat_template_kwargs": {"today": "2 May"}}}))
    assert cli(["validate", str(data), "--config", str(config), "--out-dir", str(tmp_path / "c")]) == 0


def test_real_datasets_all_valid_and_unchanged(tmp_path, real_data, model_dir):
    inputs = sorted(real_data.glob("*.jsonl"))
    assert [p.name for p in inputs] == ["alpaca_en_demo.jsonl", "fastchat_dummy_conversation.jsonl",
                                        "glaive_toolcall_en_demo.jsonl"]
    result = run(inputs, tmp_path, ValidateConfig(tokenizer=str(model_dir)))
    assert result["totals"] == {"read": 1799, "kept": 1799, "rejected": 0, "blank": 0}
    duplicates = {}
    for path, manifest in zip(inputs, result["files"]):
        name = path.name.removesuffix(".jsonl")
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
        assert (tmp_path / f"{name}.rejects.jsonl").read_bytes() == b""
        c = manifest["counts"]
        assert c["kept"] + c["rejected"] + c["blank"] == c["read"] == len(_raw_lines(path))
        assert _manifest(tmp_path, name) == manifest
        duplicates[name] = manifest["warnings"]["duplicate"]["count"]
    # Exact repeats of messages+tools (ids differ). fastchat's "38 repeats" in shared/README are not
    # exact conversation repeats: its lines share first or last turns only.
    assert duplicates == {"alpaca_en_demo": 14, "fastchat_dummy_conversation": 0, "glaive_toolcall_en_demo": 35}


# ---------------------------------------------------------------- CLI: exit codes and messages

def test_cli_exit_codes(tmp_path, capsys, real_data):
    clean = str(real_data / "fastchat_dummy_conversation.jsonl")
    assert cli(["validate", clean, "--out-dir", str(tmp_path / "a")]) == 0
    assert cli(["validate", str(MIXED), "--out-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert f"{MIXED}:3: (line) [invalid_utf8]" in err and "rejected 18" in err and "blank 2" in err
    assert cli(["validate", str(MIXED), "--out-dir", str(tmp_path / "c"), "--allow-rejects"]) == 0
    assert _manifest(tmp_path / "c")["options"]["allow_rejects"] is True
    capsys.readouterr()

    assert cli(["validate", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "d")]) == 2
    assert "missing.jsonl: input file not found" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert cli(["validate", str(tmp_path), "--out-dir", str(tmp_path / "d")]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli(["validate", clean, "--out-dir", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert cli(["validate", clean, "--out-dir", str(real_data)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    other = tmp_path / "other" / "fastchat_dummy_conversation.jsonl"
    other.parent.mkdir()
    other.write_bytes(clean_bytes := Path(clean).read_bytes())
    assert clean_bytes
    assert cli(["validate", clean, str(other), "--out-dir", str(tmp_path / "e")]) == 2
    assert "would both write" in capsys.readouterr().err
    assert cli(["validate", clean, "--out-dir", str(tmp_path / "f"), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "tokenizer folder not found" in capsys.readouterr().err
    assert cli(["validate", clean, "--out-dir", str(tmp_path / "g"), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml" in capsys.readouterr().err


def test_cli_config_gives_the_tokenizer(tmp_path, no_system_tokenizer):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: {no_system_tokenizer}\ndata:\n  max_length: 512\n")
    assert cli(["validate", str(MIXED), "--out-dir", str(tmp_path / "out"), "--config", str(config),
                "--allow-rejects"]) == 0
    manifest = _manifest(tmp_path / "out")
    assert manifest["tokenizer"] == str(no_system_tokenizer)
    assert manifest["counts"]["rejected_template_error"] == 3  # lines 11, 13, 21


# ---------------------------------------------------------------- streaming, memory, killed runs

@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    """100k distinct conversations of ~1 KB each (~100 MB)."""
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(100_000):
            text = " ".join(rng.choices(words, k=120))
            handle.write(json.dumps({"id": f"gen-{i}", "messages": [
                {"role": "user", "content": f"Question {i}: {text[:300]}"},
                {"role": "assistant", "content": text}]}) + "\n")
    return path


MEMORY_PROBE = """
import json, resource, sys
from sftpack.validation.stage import ValidateConfig, run
big, small, out = sys.argv[1:4]
run([small], out + "/warm", ValidateConfig())  # imports, schema compile, first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = run([big], out + "/big", ValidateConfig())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_bytes": (after - before) * 1024, "totals": result["totals"]}))
"""


def test_memory_stays_bounded_on_a_100k_line_file(tmp_path, big_file):
    size = big_file.stat().st_size
    assert size > 80_000_000
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(big_file), str(MIXED), str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    probe = json.loads(done.stdout)
    assert probe["totals"] == {"read": 100_000, "kept": 100_000, "rejected": 0, "blank": 0}
    # Only the 8-byte duplicate hashes grow with the line count (~100 B each in a dict).
    assert probe["growth_bytes"] < 40_000_000, probe
    assert probe["growth_bytes"] < size / 4, probe


def test_killed_run_leaves_no_output_that_looks_complete(tmp_path, big_file):
    out = tmp_path / "out"
    small = tmp_path / "big.jsonl"  # an earlier complete run under the same name
    small.write_bytes(MIXED.read_bytes())
    run([small], out, ValidateConfig())
    assert (out / "big.validate.json").exists()

    proc = subprocess.Popen([sys.executable, "-m", "sftpack", "validate", str(big_file), "--out-dir", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".incomplete-") and p.stat().st_size > 1_000_000 for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "big.validate.json").exists()  # the old manifest went first
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".incomplete-")) == [
        "big.jsonl", "big.rejects.jsonl"]  # the earlier run's outputs, now without a manifest
    assert (out / "big.jsonl").stat().st_size < 10_000
    run([MIXED], out, ValidateConfig())  # a later run clears the dead run's temp files
    assert not [p for p in out.iterdir() if p.name.startswith(".incomplete-")]


def test_reasoning_fields_are_strings_on_assistant_turns_only():
    from sftpack.checks.messages import classify_line

    def rules(messages):
        return [(e.rule, e.path) for e in classify_line(json.dumps({"messages": messages}).encode())[1]]

    user, answer = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    assert rules([user, answer | {"reasoning_content": "Greet back."}]) == []
    assert rules([user, answer | {"thinking": "Greet back."}]) == []
    assert rules([user | {"reasoning": "x"}, answer]) == [("reasoning_not_assistant", "/messages/0/reasoning")]
    assert rules([user, answer | {"reasoning_content": 3}]) == [("schema_type", "/messages/1/reasoning_content")]


def test_one_pass_verdict_equals_the_conversation_rules():
    """check_conversation's one-pass verdict agrees with the seven rules on every conversation of up
    to five turns built from ten kinds of turn (tool calls on any role, reasoning fields, empty
    contents), and its errors are theirs, in their order."""
    import itertools

    from sftpack.checks.messages import CONVERSATION_RULES, _passes_rules, check_conversation

    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    kinds = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"},
             {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "assistant", "content": "", "tool_calls": [call, call]}, {"role": "tool", "content": "r"},
             {"role": "system", "content": "s"}, {"role": "assistant", "content": " "},
             {"role": "user", "content": "hi", "tool_calls": [call]}, {"role": "user", "content": "hi", "thinking": "t"},
             {"role": "assistant", "content": "hi", "reasoning_content": "why", "tool_calls": []}]
    passing = 0
    for size in range(1, 6):
        for messages in itertools.product(kinds, repeat=size):
            record = {"messages": list(messages)}
            errors = [error for rule in CONVERSATION_RULES for error in rule(record)]
            assert _passes_rules(record["messages"]) == (not errors), messages
            assert list(check_conversation(record)) == errors
            passing += not errors
    assert passing >= 40  # the valid shapes are exercised too (44 of them)
    real = [parse_line(line)[0] for line in MIXED.read_bytes().splitlines() if line.strip()]
    for record in real:
        if record is not None and not schema_errors(record):
            assert list(check_conversation(record)) == [e for rule in CONVERSATION_RULES for e in rule(record)]


def test_any_number_of_workers_writes_the_same_files(real_data, tmp_path, monkeypatch):
    """Ranges cut lines anywhere; checked by 1, 2 or 3 workers, the kept lines, rejects and manifest
    (counts, warnings, duplicates found across range boundaries, digests) are the same."""
    from sftpack.execution import Execution
    from sftpack.validation import stage

    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text().splitlines()
    data = tmp_path / "in" / "mixed.jsonl"
    data.parent.mkdir()
    copy = lines[:50] + ["", "not json", lines[3], '{"messages": []}', "  "] + lines[50:] + [lines[10]]
    data.write_text("\n".join(copy * 3))  # no final newline; every line of copies 2 and 3 repeats one before
    monkeypatch.setattr(stage, "MIN_RANGE_BYTES", 4 << 10)  # this small file is cut into many ranges
    outputs = {}
    for workers in (1, 2, 3):
        result = run([data], tmp_path / str(workers), ValidateConfig(allow_rejects=True), execution=Execution(workers))
        kept = [json.loads(line) for line in (tmp_path / str(workers) / "mixed.jsonl").read_text().splitlines()]
        distinct = {json.dumps([k["messages"], k.get("tools")], sort_keys=True) for k in kept}
        assert result["files"][0]["warnings"]["duplicate"]["count"] == len(kept) - len(distinct) > 1000
        outputs[workers] = {p.name: p.read_bytes() if not p.name.endswith(".json") else
                            {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
                            for p in (tmp_path / str(workers)).iterdir()}
    assert outputs[1] == outputs[2] == outputs[3] and set(outputs[1]) == {"mixed.jsonl", "mixed.rejects.jsonl",
                                                                          "mixed.validate.json"}
