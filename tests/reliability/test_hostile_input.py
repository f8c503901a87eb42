"""Hostile input: validate and pack end every case with a clear reject or error, never a
traceback or a hang, and memory stays bounded (hypothesis fuzzing plus fixed worst cases)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.masking import encode_batch
from sftpack.checks.messages import classify_line
from sftpack.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Text with control characters, lone surrogates (JSON-escaped), odd line separators.
nasty_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", "", "ASSISTANT"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": nasty_text | st.none() | st.integers()}),
                    max_size=6)
records = st.fixed_dictionaries({"messages": messages}) | st.dictionaries(st.text(max_size=10), json_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(raw):
    record, errors = classify_line(raw)
    assert (record is None) == bool(errors) or record is not None


@settings(max_examples=300, deadline=None)
@given(json_values | records)
def test_random_json_gets_a_record_or_named_errors(value):
    raw = json.dumps(value).encode()
    record, errors = classify_line(raw)
    assert record is not None or errors
    for error in errors:
        assert error.rule and error.message


def test_deep_nesting_huge_and_surrogate_lines_are_rejected_not_raised():
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "invalid_json",
        b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}": "invalid_json",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}': None,  # lone surrogate: rejected somehow
        b"\xff\xfe\x00": "invalid_utf8",
        b'{"a": 1} trailing': "trailing_garbage",
        b"NaN": "invalid_json",
    }
    for raw, rule in cases.items():
        record, errors = classify_line(raw)
        assert errors, raw[:40]
        if rule:
            assert errors[0].rule == rule


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(nasty_text, nasty_text), min_size=1, max_size=3))
def test_valid_conversations_with_nasty_text_encode_exactly(smol_tokenizer, turns):
    """Control characters, odd whitespace and unpaired surrogates in content never break the
    encoder: either a named error, or ids equal to tokenizing the rendering."""
    renderer = ChatRenderer(smol_tokenizer, None)
    conversation = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    [encoded] = encode_batch(renderer, smol_tokenizer, [{"messages": conversation}])
    if encoded.error:
        assert encoded.reason in ("template_error", "template_not_maskable", "invalid_record")
        return
    [example] = encoded.sequences
    plain = smol_tokenizer(example.text, add_special_tokens=False)["input_ids"]
    assert example.input_ids.tolist() == plain
    assert np.all((example.labels == -100) | (example.labels == example.input_ids))


def _run_limited(cmd: list[str], memory_bytes: int) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit)


def test_mixed_line_endings_and_garbage_file(tmp_path, model_dir):
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    data = (good.encode() + b"\r\n" + b"\n" + good.encode() + b"\r" + b"\x00\x01garbage\n"
            + b'{"messages": [{"role": "user", "content": "\\u0000\\u001b[31m"}, {"role": "assistant", "content": "\\ud83d"}]}\n'
            + good.encode())
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(data)
    code = cli(["validate", str(path), "--out-dir", str(tmp_path / "v"), "--tokenizer", str(model_dir)])
    assert code == 1
    manifest = json.loads((tmp_path / "v" / "mixed.validate.json").read_text())
    counts = manifest["counts"]
    assert counts["kept"] + counts["rejected"] + counts["blank"] == counts["read"]
    kept = tmp_path / "v" / "mixed.jsonl"
    code = cli(["pack", str(kept), "--out-dir", str(tmp_path / "p"), "--tokenizer", str(model_dir), "--max-length", "256"])
    assert code == 0


def test_a_50mb_line_is_handled_in_bounded_memory(tmp_path, model_dir):
    """A 50 MB assistant turn: validate warns (long turn), pack drops it as too long without
    tokenizing it; both finish under a 3 GB address-space cap with no traceback."""
    path = tmp_path / "big.jsonl"
    small = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    with open(path, "w") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "word " * 10_000_000}]}) + "\n")
        handle.write(json.dumps(small) + "\n")
    cap = 3 * 1024**3
    validate = _run_limited([sys.executable, "-m", "sftpack", "validate", str(path), "--out-dir", str(tmp_path / "v"),
                             "--tokenizer", str(model_dir)], cap)
    assert validate.returncode == 0, validate.stderr
    assert "long_turn" in validate.stdout + validate.stderr
    pack = _run_limited([sys.executable, "-m", "sftpack", "pack", str(tmp_path / "v" / "big.jsonl"),
                         "--out-dir", str(tmp_path / "p"), "--tokenizer", str(model_dir), "--max-length", "512"], cap)
    assert pack.returncode == 0, pack.stderr
    assert "too_long=1" in pack.stdout and "Traceback" not in pack.stderr
