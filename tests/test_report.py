"""The report stage against the hand-counted fixture tests/fixtures/report/conversations.jsonl.

Every expected number below is counted by hand from the fixture (see tests/fixtures/README.md,
section report/), except token counts, which come from the tokenizer itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sftpack.errors import SftpackError
from sftpack.packing.bins import best_fit_decreasing
from sftpack.reporting.stage import ReportConfig, run
from sftpack.schemas.tables import ExampleStats, ReportExamples, validate_table

FIXTURE = Path(__file__).parent / "fixtures" / "report" / "conversations.jsonl"
MAX_LENGTH = 128
VALID_LINES = [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14]  # 8, 9 rejected; 10 blank


@pytest.fixture(scope="module")
def report(tmp_path_factory, model_dir) -> dict:
    out = tmp_path_factory.mktemp("report") / "report.html"
    returned = run([FIXTURE], out, ReportConfig(tokenizer=str(model_dir), max_length=MAX_LENGTH))
    written = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert written["counts"] == returned["counts"]
    return written | {"html_path": out}


@pytest.fixture(scope="module")
def records() -> dict[int, dict]:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return {n: json.loads(lines[n - 1]) for n in VALID_LINES}


def test_counts_match_the_hand_count(report):
    assert report["counts"] == {"lines": 13, "blank": 1, "valid": 11, "rejected": 2}
    assert [(r["rule"], r["lines"]) for r in report["rejected_reasons"]] == [
        ("no_assistant_turn", ["conversations.jsonl:8"]), ("empty_assistant", ["conversations.jsonl:9"])]
    assert report["turns"]["per_conversation"] == {"2": 5, "3": 2, "4": 1, "5": 3}
    assert report["roles"] == {"system": 4, "user": 13, "assistant": 15, "tool": 3}
    assert report["system_prompts"]["conversations"] == 4
    assert report["system_prompts"]["distinct"] == 2
    assert report["system_prompts"]["top"] == [{"text": "You are Pip.", "count": 3},
                                               {"text": "You are a helpful assistant.", "count": 1}]
    assert report["tools"] == {"conversations_with_tools": 2, "conversations_with_tool_calls": 2,
                               "tool_calls": 3, "tool_results": 3}
    assert report["duplicates"] == {"exact": 2, "similar_prompts": 1}
    assert report["scripts"] == {"latin": 10, "cyrillic": 1}
    assert {s: e["examples"] for s, e in report["sources"].items()} == {"conversations.jsonl": 1, "alpaca": 4,
                                                                           "chat": 4, "tools": 2}


def test_findings_name_the_rows(report):
    found = {f["kind"]: f for f in report["findings"]}
    assert set(found) == {"rejected", "exact_duplicates", "too_long", "short_answers", "language_mix",
                          "similar_prompts", "tool_calls_not_rendered"}
    # SmolLM2's template renders no tool calls: lines 7 (one call) and 13 (two turns, one call each).
    tools = found["tool_calls_not_rendered"]
    assert tools["rows"] == ["conversations.jsonl:7", "conversations.jsonl:13"] and tools["count"] == 2
    assert tools["message"] == f"{report['mask_audit']['tool_calls_not_rendered']} turns in 2 conversations"
    assert tools["severity"] == "fix" and "--chat-template" in tools["advice"]
    assert report["verdict"]["label"] == "Fix first"
    assert found["exact_duplicates"]["rows"] == ["conversations.jsonl:3 (repeats conversations.jsonl:1)",
                                                 "conversations.jsonl:14 (repeats conversations.jsonl:5)"]
    assert found["similar_prompts"]["rows"] == ["conversations.jsonl:4 (like conversations.jsonl:1)"]
    assert found["short_answers"]["rows"] == ["conversations.jsonl:4 (6 chars)"]
    assert found["language_mix"]["rows"] == ["conversations.jsonl:6 (cyrillic)"]
    assert found["too_long"]["rows"][0].startswith("conversations.jsonl:12 (")
    assert found["rejected"]["rows"] == ["conversations.jsonl:8", "conversations.jsonl:9"]
    impacts = [f["impact"] for f in report["findings"]]
    assert impacts == sorted(impacts, reverse=True)


def test_token_counts_equal_the_tokenizer(report, records, smol_tokenizer):
    lengths = {n: len(smol_tokenizer.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=True,
                                                         return_dict=False)) for n, r in records.items()}
    t = report["tokens"]
    assert t["tokens"] == sum(lengths.values())
    assert t["length_percentiles"]["conversation"]["max"] == max(lengths.values()) == lengths[12]
    assert t["length_percentiles"]["conversation"]["p50"] == pytest.approx(np.percentile(list(lengths.values()), 50))
    assert t["over_max_length"] == t["would_drop"] == 1  # line 12 only
    by_source: dict[str, int] = {}
    for n, r in records.items():
        source = r.get("source", FIXTURE.name)  # no source field: the input's file name
        by_source[source] = by_source.get(source, 0) + lengths[n]
    assert {s: e["tokens"] for s, e in report["sources"].items()} == by_source

    # Trained tokens of plain chats: each answer's content plus its <|im_end|> (ChatML).
    def trained(r):
        return sum(len(smol_tokenizer(m["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
                   for m in r["messages"] if m["role"] == "assistant")

    for source in ("alpaca", "chat"):
        expected = sum(trained(r) for r in records.values() if r.get("source") == source)
        assert report["sources"][source]["trained_tokens"] == expected
    kept = np.array([length for n, length in lengths.items() if length <= MAX_LENGTH])
    packing = t["packing"]
    assert packing["examples"] == 10 and packing["tokens"] == int(kept.sum())
    assert packing["rows"] == len(best_fit_decreasing(kept, MAX_LENGTH))
    assert packing["packing_efficiency"] == round(kept.sum() / (packing["rows"] * MAX_LENGTH), 4)


def test_html_is_self_contained_and_phone_readable(report):
    page = report["html_path"].read_text(encoding="utf-8")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('src="data:image/png;base64,') == 5  # lengths, trained share, tokens, row fill, turns
    assert not re.search(r"https?://", page)
    assert "<link" not in page and "<script" not in page
    assert "@media" in page
    assert "conversations.jsonl:14 (repeats conversations.jsonl:5)" in page
    leftovers = [p.name for p in report["html_path"].parent.iterdir() if p.name.startswith(".incomplete")]
    assert leftovers == []


def test_without_tokenizer_counts_only(tmp_path):
    result = run([FIXTURE], tmp_path / "r.html", ReportConfig())
    assert result["tokens"] is None
    assert result["counts"] == {"lines": 13, "blank": 1, "valid": 11, "rejected": 2}
    assert "no tokenizer given" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_cli_with_config_and_flags(tmp_path, model_dir, capsys):
    from sftpack.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  max_length: 64\n  truncation: truncate\n",
                      encoding="utf-8")
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(FIXTURE), "--config", str(config), "--max-length", "100", "--out", str(out)]) == 0
    written = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert written["options"]["max_length"] == 100 and written["options"]["truncation"] == "truncate"
    assert written["tokens"]["would_truncate"] == written["tokens"]["over_max_length"] >= 1
    assert any(f["kind"] == "answers_truncated" for f in written["findings"])
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_name_the_problem(tmp_path, capsys):
    from sftpack.cli import main

    assert main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.txt")]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl: input not found" in err and "expected an .html path" in err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a packed folder" in capsys.readouterr().err


def test_packed_folder_report(tmp_path, model_dir):
    from sftpack.packing.stage import PackConfig
    from sftpack.packing.stage import run as pack

    packed = pack([FIXTURE], tmp_path / "packed", PackConfig(tokenizer=str(model_dir), max_length=MAX_LENGTH,
                                                             allow_rejects=True))
    result = run([packed["path"]], tmp_path / "report.html", ReportConfig())
    totals = packed["totals"]
    assert result["kind"] == "packed"
    assert result["rows"]["rows"] == totals["rows"] and result["rows"]["tokens"] == totals["tokens"]
    assert result["rows"]["packing_efficiency"] == round(totals["packing_efficiency"], 4)
    assert result["counts"]["examples"] == 13 and result["counts"]["dropped"] == totals["dropped"]
    assert result["tokens"]["tokens"] == totals["tokens"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "How full are the packed rows?" in page and not re.search(r"https?://", page)
    # Samples as `sftpack inspect` shows the rows: one per source first, each a whole sequence.
    sources = {s["source"] for s in result["samples"]}
    assert sources == set(result["sources"]) and len(result["samples"]) == 8
    assert page.count("<div class=sample>") == 8 and "<span class=tr>" in page


# ---------------------------------------------------------------- the tables against their schemas

def _examples_table() -> pl.DataFrame:
    from sftpack.reporting.scan import scan_jsonl

    frame, _ = scan_jsonl([FIXTURE], ReportConfig(), None)
    return frame


def test_report_examples_schema_rejects_broken_tables_naming_column_and_rows():
    frame = validate_table(ReportExamples, _examples_table(), "examples")
    broken = frame.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(-1).otherwise(pl.col("turns"))
                                .alias("turns"))
    with pytest.raises(SftpackError, match=r"turns: greater_than_or_equal_to\(1\) fails at rows \[2\] \(line 3\)"):
        validate_table(ReportExamples, broken, "examples")
    forward = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(5).otherwise(pl.col("duplicate_of"))
                                 .alias("duplicate_of"))
    with pytest.raises(SftpackError, match=r"repeats_point_backwards fails at rows \[0\] \(line 1\)"):
        validate_table(ReportExamples, forward, "examples")


def test_example_stats_schema_names_the_rows():
    stats = pl.DataFrame({
        "example_id": ["a", "b", "c"], "source": [None, "x", "x"], "input": ["f.jsonl"] * 3, "line": [1, 2, 3],
        "turns": [2, 2, 2], "tokens": [10, 10, 10], "trained_tokens": [3, 12, 0], "truncated": [False] * 3,
        "dropped": [None, None, "nope"]},
        schema_overrides={"turns": pl.Int32, "tokens": pl.Int32, "trained_tokens": pl.Int32})
    with pytest.raises(SftpackError) as err:
        validate_table(ExampleStats, stats, "stats.parquet")
    message = str(err.value)
    assert "trained_within_tokens fails at rows [1] (line 2)" in message
    assert "dropped: isin" in message and "rows [2] (line 3): 'nope'" in message
    assert "kept_examples_have_trained_tokens" not in message  # row 2 is dropped (with a bad reason)


def test_report_counts_split_conversations_like_pack(model_dir, tmp_path):
    """Reasoning data under Qwen3's template: the report's mask audit shows what pack will do."""
    import json as _json

    from sftpack.packing.stage import PackConfig
    from sftpack.packing.stage import run as pack
    from sftpack.reporting.stage import ReportConfig, run as report

    template = Path(__file__).resolve().parent / "fixtures" / "templates" / "real" / "qwen3.jinja"
    data = tmp_path / "r.jsonl"
    data.write_text(_json.dumps({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "reasoning_content": "Greet."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}) + "\n")
    result = report([data], tmp_path / "r.html", ReportConfig(tokenizer=str(model_dir), chat_template=str(template)))
    packed = pack([data], tmp_path / "p", PackConfig(tokenizer=str(model_dir), chat_template=str(template)))
    audit = packed["totals"]["audit"]
    assert result["mask_audit"]["split_conversations"] == audit["split_conversations"] == 1
    assert result["mask_audit"]["split_extra_tokens"] == audit["split_extra_tokens"] > 0
    page = (tmp_path / "r.html").read_text()
    assert "Masks: will it stop" in page
    # The samples show the split conversation as the sequences pack trains.
    [sample] = result["samples"]
    assert "Conversations split into sequences" in sample["why"] and len(sample["sequences"]) == 2
    assert "sequence 1 of 2: " in page and "sequence 2 of 2: " in page
    assert {f["kind"]: f["rows"] for f in result["findings"]}["split_conversations"] == ["r.jsonl:1"]
    assert report([packed["path"]], tmp_path / "p.html", ReportConfig())["mask_audit"] == audit


def test_a_packed_folder_ranks_masking_findings_by_the_examples_they_touch(model_dir, tmp_path):
    """pack counts turns and the examples they are in; the packed folder's report says both and
    ranks by examples, as the report of the raw lines does (a share of examples, never over 1)."""
    from conftest import read_real
    from sftpack.packing.stage import PackConfig, audit_warnings
    from sftpack.packing.stage import run as pack

    data = tmp_path / "glaive.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_real("glaive_toolcall_en_demo")[:80]), encoding="utf-8")
    packed = pack([data], tmp_path / "p", PackConfig(tokenizer=str(model_dir), max_length=2048))
    raw = run([data], tmp_path / "raw.html", ReportConfig(tokenizer=str(model_dir), max_length=2048))
    audit = packed["totals"]["audit"]
    turns, examples = audit["tool_calls_not_rendered"], audit["tool_calls_not_rendered_examples"]
    assert turns == raw["mask_audit"]["tool_calls_not_rendered"] and examples < turns  # several calls a conversation
    want = {f["kind"]: f for f in raw["findings"]}["tool_calls_not_rendered"]
    got = {f["kind"]: f for f in run([packed["path"]], tmp_path / "p.html", ReportConfig())["findings"]}
    tools = got["tool_calls_not_rendered"]
    assert (tools["count"], tools["share"]) == (want["count"], want["share"]) == (examples, round(examples / 80, 4))
    assert tools["message"] == f"{want['message']} (pack's count; rows not recorded)"
    assert any(w.startswith(f"{examples} examples: {turns} assistant turns call tools") for w in audit_warnings(audit))


# ---------------------------------------------------------------- issue 24: sources and repeats per input

def _chat_line(prompt: str, **meta) -> str:
    return json.dumps(meta | {"messages": [{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": f"About {prompt}, in short."}]})


def test_sources_fall_back_to_the_file_name_and_repeats_count_per_input_pair(tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(_chat_line(f"q{i}") for i in range(5)) + "\n", encoding="utf-8")
    glaive = tmp_path / "glaive.jsonl"  # 3 rows of chats.jsonl again, one of its own twice, one tagged row
    glaive.write_text("\n".join([_chat_line("q0"), _chat_line("g1"), _chat_line("q1"), _chat_line("g1"),
                                 _chat_line("q2"), _chat_line("t", source="tagged")]) + "\n", encoding="utf-8")
    result = run([chats, glaive], tmp_path / "r.html", ReportConfig())
    assert {s: e["examples"] for s, e in result["sources"].items()} == {"chats.jsonl": 5, "glaive.jsonl": 5,
                                                                        "tagged": 1}
    found = {f["kind"]: f for f in result["findings"]}["exact_duplicates"]
    assert found["pairs"] == [{"input": "glaive.jsonl", "of": "chats.jsonl", "count": 3},
                              {"input": "glaive.jsonl", "of": "glaive.jsonl", "count": 1}]
    assert "glaive.jsonl repeats 3 rows of chats.jsonl; glaive.jsonl repeats 1 row of itself" in found["message"]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "glaive.jsonl repeats 3 rows of chats.jsonl" in page and "(none)" not in page


def test_plots_mark_max_length_on_a_log_axis_and_keep_every_bar_inside(monkeypatch):
    import matplotlib.pyplot as plt

    import sftpack.reporting.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or "png")  # keep the figures open
    frame = pl.DataFrame({"tokens": [20, 30, 40, 50, 5000] * 40, "turns": [2] * 150 + [4] * 49 + [90]})
    sources = {"a": {"tokens": 900, "trained_tokens": 300}, "b.jsonl": {"tokens": 100, "trained_tokens": 100}}
    made = plots.make_plots(frame, sources, 1024, np.array([1000, 512]), with_tokens=True)
    assert set(made) == {"lengths", "turns", "trained_share", "tokens", "fill"}
    lengths, turns = figures[0].axes[0], figures[1].axes[0]
    assert lengths.get_xscale() == "log"
    assert {line.get_label() for line in lengths.get_lines()} == {"max_length 1,024", "p50 40", "p90 5,000",
                                                                  "p99 5,000"}
    top, (left, right) = turns.get_ylim()[1], turns.get_xlim()
    assert all(bar.get_height() < top and left < bar.get_x() and bar.get_x() + bar.get_width() < right
               for bar in turns.patches)
    assert all(ax.get_xlabel() for fig in figures for ax in fig.axes)
    plt.close("all")
