"""What a new user trips over (issue 24): the limits and hints pack prints, one form of
`file:line`, one policy for empty inputs and for rejects, and error wording."""

from __future__ import annotations

import json
import re
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


def test_json_errors_say_at_once():
    from sftpack.io.lines import parse_line

    _, [error] = parse_line(b'{"messages": [{"role": "user", "content": "unterminated}]}\n')
    assert error.message == "Unterminated string starting at column 43", error.message
    _, [error] = parse_line(b'{"messages": [}\n')
    assert error.message.endswith(" at column 15") and " at at " not in error.message


STAGE_PREFIX = re.compile(r'SftpackError\(f?"(validate|pack|report|plan|train|sanity|inspect|verify|convert|'
                          r'convert-data)( options)?: ')


def test_the_cli_says_the_stage_name_once(model_dir, tmp_path, capsys):
    # The CLI prefixes `sftpack STAGE: `; a message never starts with the stage's name again.
    sources = [p for p in (Path(__file__).resolve().parents[1] / "pipeline").rglob("*.py")
               if STAGE_PREFIX.search(p.read_text(encoding="utf-8"))]
    assert sources == []
    missing = str(tmp_path / "missing.jsonl")
    for argv in (["validate", missing, "--out-dir", str(tmp_path / "v")],
                 ["validate", missing, "--out-dir", str(tmp_path / "v"), "--max-turn-chars", "0"],
                 ["pack", missing, "--out-dir", str(tmp_path / "p"), "--tokenizer", str(model_dir)],
                 ["pack", missing, "--out-dir", str(tmp_path / "p")],
                 ["report", missing, "--out", str(tmp_path / "r.html")],
                 ["inspect", str(tmp_path), "--row", "-1"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        stage = argv[0]
        assert err.startswith(f"sftpack {stage}: ") and f"sftpack {stage}: {stage}" not in err, err


def test_validate_exiting_1_names_the_rejects_file_and_allow_rejects(tmp_path, capsys):
    raw = _write(tmp_path / "raw.jsonl", [_chat("Hi", "Hello"), '{"messages": ["'])
    assert cli(["validate", str(raw), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "out" / "raw.rejects.jsonl") in err and "--allow-rejects" in err


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_input_without_records_is_an_error_in_every_stage(model_dir, tmp_path, capsys, content):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    for argv in (["validate", str(empty), "--out-dir", str(tmp_path / "v")],
                 ["pack", str(empty), "--out-dir", str(tmp_path / "p"), "--tokenizer", str(model_dir)],
                 ["report", str(empty), "--out", str(tmp_path / "r.html"), "--tokenizer", str(model_dir)],
                 ["convert-data", str(empty), "--out", str(tmp_path / "c.jsonl")]):
        assert cli(argv) == 2, argv
        assert f"sftpack {argv[0]}: {empty}: no records" in capsys.readouterr().err


def test_pack_fails_on_rejects_as_validate_does_unless_allowed(model_dir, tmp_path, capsys):
    raw = _write(tmp_path / "raw.jsonl", [_chat("Hi", "Hello"),
                                          {"messages": [{"role": "bot", "content": "Hi"}]}, "not json"])
    out = str(tmp_path / "packed")
    assert cli(["pack", str(raw), "--tokenizer", str(model_dir), "--out-dir", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sftpack pack: 2 of 3 examples failed validate's checks") and "--allow-rejects" in err
    assert "raw.jsonl:2 [schema_enum]" in err and "raw.jsonl:3 [invalid_json]" in err
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name_or_path: {model_dir}}}\ndata: {{allow_rejects: true}}\n")
    assert cli(["pack", str(raw), "--config", str(config), "--out-dir", out]) == 0  # reuses the folder
    assert "reused" in capsys.readouterr().out
    assert cli(["pack", str(raw), "--tokenizer", str(model_dir), "--out-dir", out, "--allow-rejects"]) == 0


def test_hints_role_map_tokenizer_file_and_one_reference_form(model_dir, tmp_path, capsys):
    raw = _write(tmp_path / "raw.jsonl", [{"messages": [{"role": "human", "content": "Hi"},
                                                        {"role": "assistant", "content": "Hello"}]}])
    assert cli(["validate", str(raw), "--out-dir", str(tmp_path / "v")]) == 1
    assert f"{raw}:1: /messages/0/role [schema_enum]" in (err := capsys.readouterr().err) and "--role-map" in err
    assert cli(["validate", str(raw), "--out-dir", str(tmp_path / "v2"), "--role-map", "user=human"]) == 0

    for argv in (["validate", str(raw), "--out-dir", str(tmp_path / "v3")],
                 ["pack", str(raw), "--out-dir", str(tmp_path / "p")]):
        assert cli([*argv, "--tokenizer", str(model_dir / "tokenizer.json")]) == 2
        err = capsys.readouterr().err
        assert "tokenizer.json: is a file" in err and "folder not found" not in err and str(model_dir) in err

    # a Parquet row is `file:row`, as a JSONL line is `file:line`
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    assert cli(["validate", str(tmp_path / "x.parquet"), "--out-dir", str(tmp_path / "v4")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.parquet'}:2: /conversations/1/from [convert_role]" in err and " row 2" not in err
    assert cli(["convert-data", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "c.jsonl")]) == 1
    assert f"{tmp_path / 'x.parquet'}:2: /conversations/1/from" in capsys.readouterr().err
