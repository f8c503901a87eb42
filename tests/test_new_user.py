"""What a new user trips over (issue 24): the limits and hints pack prints, one form of
`file:line`, one policy for empty inputs and for rejects, and error wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftpack.cli import main as cli


def _chat(user: str, answer: str, **extra) -> dict:
    return {**extra, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_pack_names_the_limit_hints_at_truncation_and_lists_drop_lengths(model_dir, tmp_path, capsys):
    records = [_chat(f"What is {i} + {i}?", f"{2 * i}.") for i in range(8)]
    records += [_chat("Tell me a long story.", "Once upon a time " * 40)] * 2  # ~200 tokens each: 2 of 10
    raw = _write(tmp_path / "raw.jsonl", records)
    assert cli(["pack", str(raw), "--tokenizer", str(model_dir), "--max-length", "64",
                "--out-dir", str(tmp_path / "packed")]) == 0
    printed = capsys.readouterr()
    assert "too_long=2 over 64" in printed.out
    assert "2 of 10 examples (20.0%) dropped as too_long" in printed.err and "--truncation truncate" in printed.err
    manifest = json.loads((Path(printed.out.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert [(d["line"], d["tokens"] > 64) for d in manifest["first_drops"]] == [(9, True), (10, True)]
