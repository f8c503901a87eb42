"""The report stage must not crash on any file validate accepts, and must count what it was given.

Hypothesis writes messages JSONL files (exact and near duplicates, missing and empty sources,
tool-only conversations, rejects, blank lines) and runs `sftpack.reporting.stage.run` on them. An oracle
written from the definitions in pipeline/reporting/stage.py's docstring says what report.json must hold.
Issue 14 (a polars panic in the findings) is pinned by the regression tests at the end.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sftpack.reporting.findings as report_findings
import sftpack.reporting.plots as report_plots
from sftpack.reporting.stage import ReportConfig, run
from sftpack.reporting.findings import findings
from sftpack.reporting.scan import EXAMPLE_SCHEMA

# No "<" so no text can spell a control token (`<|im_end|>`); Cyrillic and Han for the script mix.
ALPHABET = list("abcdeXYZ019 ,.!?-_'") + ["é", "д", "ж", "中"]
TEXT = st.text(alphabet=ALPHABET, max_size=12)
ANSWER = st.builds(lambda head, tail: head + tail, st.sampled_from("abXд中"), TEXT)  # never blank
SOURCE = st.sampled_from([None, "", "alpaca", "Chat", "(none)"])  # None: the key is left out
ID = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from(["a", "x:1"]))  # repeated ids are fine
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
# Lines validate rejects, with the rule it reports first.
REJECTS = {
    "not json": "invalid_json",
    "[1, 2]": "not_object",
    '{"messages": []}': "schema_minItems",
    '{"messages": [{"role": "bot", "content": "x"}]}': "schema_enum",
    '{"messages": [{"role": "user", "content": "hi"}]}': "no_assistant_turn",
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}': "empty_assistant",
    '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
    '{"role": "assistant", "content": "b"}]}': "system_not_first",
    '{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}, '
    '{"role": "assistant", "content": "b"}]}': "tool_without_call",
}
NEAR = [str.upper, str.lower, str.title, lambda s: s + "?!", lambda s: "¿" + s, lambda s: s.replace(" ", " -- ")]


# ---------------------------------------------------------------- generated files

def _call(q: str, n: int) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": "lookup", "arguments": {"q": q}}}


@st.composite
def chats(draw) -> list[dict]:
    """user/assistant turns, maybe after a system prompt."""
    system = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    turns = draw(st.lists(st.tuples(TEXT, ANSWER), min_size=1, max_size=3))
    return system + [m for q, a in turns for m in ({"role": "user", "content": q},
                                                       {"role": "assistant", "content": a})]


@st.composite
def tool_chats(draw) -> list[dict]:
    """Tool calls and their results; tool-only when it ends on an unanswered call (no text answer)."""
    calls = [_call(q, n) for n, q in enumerate(draw(st.lists(TEXT, min_size=1, max_size=2)))]
    messages = [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": "", "tool_calls": calls}]
    messages += [{"role": "tool", "content": draw(TEXT), "tool_call_id": c["id"]} for c in calls]
    last = draw(st.one_of(ANSWER, st.none()))
    if last is None:
        return messages + [{"role": "assistant", "content": "", "tool_calls": [_call(draw(TEXT), len(calls))]}]
    return messages + [{"role": "assistant", "content": last}]


@st.composite
def records(draw) -> dict:
    tool = draw(st.booleans())
    record = {"messages": draw(tool_chats() if tool else chats())}
    if tool and draw(st.booleans()):
        record["tools"] = TOOLS
    for key, value in (("id", draw(ID)), ("source", draw(SOURCE))):
        if value is not None:
            record[key] = value
    return record


def _near(record: dict, change) -> dict:
    """The same conversation with its first user prompt changed in case or punctuation only."""
    messages = [dict(m) for m in record["messages"]]
    first = next(m for m in messages if m["role"] == "user")
    first["content"] = change(first["content"])
    return record | {"messages": messages}


@st.composite
def datasets(draw) -> list[str | dict]:
    """Lines in file order: a record dict (valid), a reject line (str) or "" (blank)."""
    lines: list[str | dict] = []
    for _ in range(draw(st.integers(1, 30))):
        valid = [line for line in lines if isinstance(line, dict)]
        kind = draw(st.sampled_from(["new", "new", "exact", "near", "reject", "blank"]))
        if kind in ("exact", "near") and valid:
            earlier = draw(st.sampled_from(valid))
            meta = {k: v for k, v in (("id", draw(ID)), ("source", draw(SOURCE))) if v is not None}
            copy = {k: v for k, v in earlier.items() if k not in ("id", "source")} | meta
            lines.append(copy if kind == "exact" else _near(copy, draw(st.sampled_from(NEAR))))
        elif kind == "reject":
            lines.append(draw(st.sampled_from(sorted(REJECTS))))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", "   "])))
        else:
            lines.append(draw(records()))
    if all(isinstance(line, str) and not line.strip() for line in lines):
        lines.append(draw(records()))  # an input without records is an error (tests/test_new_user.py)
    return lines


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n"
                            for x in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the oracle

def _normal(prompt: str) -> str:
    return re.sub(r"[\W_]+", " ", prompt.lower()).strip()


def expected(name: str, lines: list[str | dict]) -> dict:
    """What report.json must say, from the module docstring's definitions (no tokenizer)."""
    first_conversation: dict[str, str] = {}
    first_prompt: dict[str, str] = {}
    exact, similar, sources, turns, tools = [], [], Counter(), Counter(), Counter()
    for line_no, line in enumerate(lines, start=1):
        if not isinstance(line, dict):
            continue
        at, messages = f"{name}:{line_no}", line["messages"]
        key = json.dumps([messages, line.get("tools") or None], sort_keys=True)
        prompt = _normal(next((m["content"] for m in messages if m["role"] == "user"), ""))
        if key in first_conversation:
            exact.append(f"{at} (repeats {first_conversation[key]})")
        elif prompt in first_prompt:
            similar.append(f"{at} (like {first_prompt[prompt]})")
        first_conversation.setdefault(key, at)
        if prompt:
            first_prompt.setdefault(prompt, at)
        sources[line.get("source", name)] += 1  # no source: the file's name
        turns[str(len(messages))] += 1
        tools["tool_calls"] += sum(len(m.get("tool_calls", ())) for m in messages)
        tools["tool_results"] += sum(m["role"] == "tool" for m in messages)
    rejects = Counter(REJECTS[line] for line in lines if isinstance(line, str) and line.strip())
    return {"counts": {"lines": sum(isinstance(x, dict) or bool(x.strip()) for x in lines),
                       "blank": sum(isinstance(x, str) and not x.strip() for x in lines),
                       "valid": sum(sources.values()), "rejected": sum(rejects.values())},
            "rejects": dict(rejects), "exact": exact, "similar": similar, "sources": dict(sources),
            "turns": dict(turns), "tools": dict(tools)}


def check_report(result: dict, want: dict) -> None:
    """report.json against the oracle (cfg.examples must exceed the lines, so every row is listed)."""
    assert result["counts"] == want["counts"]
    assert {r["rule"]: r["count"] for r in result["rejected_reasons"]} == want["rejects"]
    assert result["duplicates"] == {"exact": len(want["exact"]), "similar_prompts": len(want["similar"])}
    found = {f["kind"]: f for f in result["findings"]}
    assert found.get("exact_duplicates", {}).get("rows", []) == want["exact"]
    assert found.get("similar_prompts", {}).get("rows", []) == want["similar"]
    assert {s: e["examples"] for s, e in result["sources"].items()} == want["sources"]
    assert result["turns"]["per_conversation"] == want["turns"]
    for key in ("tool_calls", "tool_results"):
        assert result["tools"][key] == want["tools"].get(key, 0)
    written = json.loads(Path(result["json"]).read_text(encoding="utf-8"))
    assert written["counts"] == result["counts"] and written["findings"] == result["findings"]
    assert "<h1>sftpack dataset report</h1>" in Path(result["html"]).read_text(encoding="utf-8")


def check_tokens(result: dict) -> None:
    """Token numbers that must hold whatever the tokenizer says."""
    t = result["tokens"]
    # 0 trained tokens is legal: a template that renders no tool calls leaves a tool-only chat untrained.
    assert 0 <= t["trained_tokens"] <= t["tokens"] and t["no_trained_tokens"] <= result["counts"]["valid"]
    assert sum(e["tokens"] for e in result["sources"].values()) == t["tokens"]
    assert t["packing"]["tokens"] <= t["tokens"] and t["packing"]["examples"] <= result["counts"]["valid"]
    assert t["over_max_length"] == t["would_drop"] + t["would_truncate"]


def _no_png(fig) -> str:
    """Stands in for plots._png: the plots are still drawn, only tight_layout and PNG encoding
    (most of a small report's time) are skipped, so hypothesis can try more files."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return ""


# ---------------------------------------------------------------- fuzzing run()

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=datasets())
def test_counts_match_the_generated_file_without_tokenizer(lines):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(report_plots, "_png", _no_png):
        path = write_lines(Path(tmp) / "gen.jsonl", lines)
        result = run([path], Path(tmp) / "report.html", ReportConfig(examples=100))
        check_report(result, expected(path.name, lines))
    assert result["tokens"] is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each a whole report run
@given(lines=datasets(), max_length=st.sampled_from([8, 40, 512]), train_on=st.sampled_from(["all", "last"]),
       truncation=st.sampled_from(["drop", "truncate"]))
def test_counts_and_tokens_with_the_tokenizer(model_dir, lines, max_length, train_on, truncation):
    cfg = ReportConfig(tokenizer=str(model_dir), max_length=max_length, train_on=train_on, truncation=truncation,
                       examples=100)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(report_plots, "_png", _no_png):
        path = write_lines(Path(tmp) / "gen.jsonl", lines)
        result = run([path], Path(tmp) / "report.html", cfg)
        check_report(result, expected(path.name, lines))
    check_tokens(result)


def _chat(prompt: str, answer: str, **meta) -> dict:
    return meta | {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


TOOL_ONLY = {"tools": TOOLS, "messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "", "tool_calls": [_call("x", 1)]}]}
EDGE_CASES = {  # name -> lines; each goes through the full run, PNGs included
    "single_line": [_chat("Hi", "Hello.")],
    "only_rejects": sorted(REJECTS),
    "tool_only": [TOOL_ONLY] * 3,
    "empty_and_missing_sources": [_chat(f"q{i}", "ok", source="") for i in range(3)] + [_chat("Q0!", "fine")],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_write_the_report(case, tmp_path, model_dir):
    path = write_lines(tmp_path / "edge.jsonl", EDGE_CASES[case])
    result = run([path], tmp_path / "report.html", ReportConfig(tokenizer=str(model_dir), examples=100))
    check_report(result, expected(path.name, EDGE_CASES[case]))
    check_tokens(result)


# ---------------------------------------------------------------- size and real data

def test_100k_short_lines(tmp_path):
    """100k short lines, a thousand distinct prompts (no tokenizer: validation dominates)."""
    lines: list[str | dict] = [{"messages": [{"role": "user", "content": f"q{i % 1000}"},
                                             {"role": "assistant", "content": f"a{i % 3000}"}]} for i in range(99_900)]
    for at in range(0, 100_000, 1000):
        lines.insert(at, "not json")
    path = write_lines(tmp_path / "big.jsonl", lines)
    started = time.perf_counter()
    result = run([path], tmp_path / "report.html", ReportConfig())
    assert time.perf_counter() - started < 120  # 10-30 s on 2 shared cores, most of it validation
    assert Path(result["html"]).stat().st_size < 3_000_000  # the page stays small whatever the input size
    assert result["counts"] == {"lines": 100_000, "blank": 0, "valid": 99_900, "rejected": 100}
    # 3000 distinct conversations, every prompt repeated 3 times across them.
    assert result["duplicates"] == {"exact": 99_900 - 3000, "similar_prompts": 2000}


def test_real_repeated_conversations(tmp_path, real_data, model_dir):
    """Issue 14's file: fastchat + glaive tool calls + fastchat's first 50 lines again."""
    fastchat = (real_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
    glaive = (real_data / "glaive_toolcall_en_demo.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "rep.jsonl"
    path.write_text("\n".join(fastchat + glaive + fastchat[:50]) + "\n", encoding="utf-8")
    result = run([path], tmp_path / "report.html", ReportConfig(tokenizer=str(model_dir)))
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.json").is_file()
    want = expected(path.name, [json.loads(line) for line in fastchat + glaive + fastchat[:50]])
    assert result["counts"] == want["counts"] == {"lines": 850, "blank": 0, "valid": 850, "rejected": 0}
    assert result["duplicates"] == {"exact": len(want["exact"]), "similar_prompts": len(want["similar"])}
    repeats = {f["kind"]: f for f in result["findings"]}["exact_duplicates"]["rows"]
    assert repeats == want["exact"][:10]


# ---------------------------------------------------------------- issue 14 regressions

def test_where_survives_an_empty_chunk_left_by_a_filter():
    """A Series mask keeps the frame's chunks, the first one empty here: pl.format panicked on that."""
    def part(lines: range) -> pl.DataFrame:
        return pl.DataFrame({"input": ["a.jsonl"] * len(lines), "line": list(lines)})

    frame = pl.concat([part(range(1, 5)), part(range(5, 9))], rechunk=False)
    mask = pl.Series([False] * 5 + [True] * 3)
    assert report_findings._where(frame, mask, ReportConfig()) == ["a.jsonl:6", "a.jsonl:7", "a.jsonl:8"]


def test_findings_name_repeats_late_in_a_large_frame():
    """Repeats only after row 800 of 850: the join the findings used split its output per thread,
    leaving an empty chunk after the filter, and panicked."""
    rows = [{"input": "x.jsonl", "line": i, "example_id": str(i), "source": "s", "turns": 2, "tool_calls": 0,
             "has_system": False, "shortest_answer_chars": 20, "script": "latin",
             "duplicate_of": i - 800 if i > 800 else None, "similar_prompt_of": None, "tokens": None,
             "trained_tokens": None, "trained_beyond_max": None} for i in range(1, 851)]
    frame = pl.DataFrame(rows, schema=EXAMPLE_SCHEMA, orient="row")
    [found] = findings(frame, None, ReportConfig(examples=3), with_tokens=False)
    assert found["kind"] == "exact_duplicates" and found["count"] == 50
    assert found["rows"] == [f"x.jsonl:{i} (repeats x.jsonl:{i - 800})" for i in (801, 802, 803)]
