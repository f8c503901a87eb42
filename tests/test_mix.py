"""`sftpack mix`: a recipe's sources -> one clean, decontaminated, weighted training set.

Real conversations (tests/data/real) in small files; every mixture's counts are checked to balance.
"""

from __future__ import annotations

import dataclasses
import os
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sftpack import api as sftpack  # sftpack.report and sftpack.train are shadowed once their subpackages are imported
from conftest import read_real
from sftpack.checks.conversation_key import conversation_key
from sftpack.errors import SftpackError

QUESTIONS = [  # benchmark items, 13+ words each
    "A train leaves the station at noon travelling sixty miles an hour towards a city two hundred miles away.",
    "Which element of the periodic table has the highest electronegativity and why does it attract electrons so strongly?",
    "Explain why the sky appears blue during the day but turns red and orange when the sun is setting.",
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]} | extra


def assert_balanced(manifest: dict) -> None:
    """in = held out + removed + sampled and out = sampled + repeated, per source; the files agree."""
    folder = Path(manifest["path"])
    train, removed = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "removed.jsonl")
    for name, s in manifest["sources"].items():
        assert s["in"] == s["held_out"] + sum(s["removed"].values()) + s["sampled"], name
        assert s["out"] == s["sampled"] + s["repeated"], name
        assert sum(1 for line in train if line["source"] == name) == s["out"], name
        assert Counter(r["reason"] for r in removed if r["source"] == name) == Counter(s["removed"]), name
        eval_file = folder / "eval" / f"{name}.jsonl"
        assert (len(read_jsonl(eval_file)) if eval_file.exists() else 0) == s["held_out"], name


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory) -> Path:
    """The real alpaca conversations (distinct), as plain JSONL."""
    folder = tmp_path_factory.mktemp("mix-real")
    return write_jsonl(folder / "alpaca.jsonl", read_real("alpaca_en_demo")[:300])


@pytest.fixture(scope="module")
def glaive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mix-glaive")
    return write_jsonl(folder / "glaive.jsonl", read_real("glaive_toolcall_en_demo")[:100])


# ---------------------------------------------------------------- sampling

def chosen(manifest: dict, name: str) -> Counter:
    """The (input, row) pairs a source gives to train.jsonl, with their repeats."""
    return Counter((line["input"], line["row"]) for line in read_jsonl(Path(manifest["path"]) / "train.jsonl")
                   if line["source"] == name)


def test_take_epochs_and_weights_give_exact_counts_reproducibly(alpaca, glaive, tmp_path):
    recipe = {"sources": [{"name": "a", "path": str(alpaca), "weight": 3},
                          {"name": "g", "path": str(glaive), "weight": 1},
                          {"name": "t", "path": str(glaive), "take": 250},
                          {"name": "e", "path": str(alpaca), "epochs": 0.5}],
              "dedup": {"exact": False}, "total": 602, "eval": {"count": 5}, "seed": 7}
    first = sftpack.mix(recipe, tmp_path / "one")
    assert_balanced(first)
    s = first["sources"]
    # available: 300 - 5 held out - 4 copies of e's eval records (the same file) = 291; glaive 100 - 5 - 5 = 90
    assert [s[n]["available"] for n in "agte"] == [291, 90, 90, 291]
    # e: 0.5 x 291 = 145.5 -> 146; t: 250 = 2 x 90 + 70; a and g split 602 - 250 - 146 = 206 as 3:1 = 154.5 : 51.5,
    # the tied remainder to the earlier source (Python's round would give 154 : 52)
    assert {n: (s[n]["out"], s[n]["sampled"], s[n]["repeated"]) for n in "agte"} == {
        "a": (155, 155, 0), "g": (51, 51, 0), "t": (250, 90, 160), "e": (146, 146, 0)}
    assert max(chosen(first, "t").values()) == 3 and sum(v == 3 for v in chosen(first, "t").values()) == 70
    again = sftpack.mix(recipe, tmp_path / "two")
    assert (Path(again["path"]) / "train.jsonl").read_bytes() == (Path(first["path"]) / "train.jsonl").read_bytes()


def test_another_seed_draws_another_sample_from_the_same_rows(alpaca, tmp_path):
    """Without an eval split (which a seed would move too), only sampling can tell the seeds apart."""
    recipe = {"sources": [{"name": "some", "path": str(alpaca), "take": 100},
                          {"name": "all", "path": str(alpaca)}],
              "dedup": {"exact": False}, "decontaminate": {"eval_splits": False}, "seed": 7}
    seven, eight = sftpack.mix(recipe, tmp_path), sftpack.mix(recipe | {"seed": 8}, tmp_path)
    assert seven["path"] != eight["path"]
    assert sum(chosen(seven, "some").values()) == sum(chosen(eight, "some").values()) == 100
    assert chosen(seven, "some") != chosen(eight, "some")
    assert chosen(seven, "all") == chosen(eight, "all") == Counter({("alpaca.jsonl", row): 1 for row in range(1, 301)})


def test_largest_remainder_gives_tied_remainders_to_the_earlier_source():
    from sftpack.mixing.sampling import largest_remainder

    assert largest_remainder(5, {"x": 1, "y": 1}) == {"x": 3, "y": 2}  # round() would give 2 and 2
    assert largest_remainder(5, {"y": 1, "x": 1}) == {"y": 3, "x": 2}
    assert largest_remainder(7, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 2, "c": 2}
    assert largest_remainder(11, {"a": 1, "b": 2, "c": 2}) == {"a": 2, "b": 5, "c": 4}  # 2.2, 4.4, 4.4
    assert largest_remainder(10, {"a": 0.7, "b": 0.2, "c": 0.1}) == {"a": 7, "b": 2, "c": 1}
    assert largest_remainder(0, {"a": 1}) == {"a": 0}


def test_adding_a_source_changes_no_other_sources_sample(alpaca, glaive, tmp_path):
    fastchat = write_jsonl(tmp_path / "fastchat.jsonl", read_real("fastchat_dummy_conversation")[:100])
    recipe = {"sources": [{"name": "a", "path": str(alpaca), "take": 50}, {"name": "g", "path": str(glaive), "take": 30}],
              "eval": {"count": 3}}
    before = sftpack.mix(recipe, tmp_path)
    after = sftpack.mix(recipe | {"sources": recipe["sources"] + [{"name": "f", "path": str(fastchat), "take": 20}]},
                        tmp_path)
    for name in "ag":
        assert chosen(after, name) == chosen(before, name) and sum(chosen(after, name).values()) in (50, 30)
        assert (Path(after["path"], "eval", f"{name}.jsonl").read_bytes()
                == Path(before["path"], "eval", f"{name}.jsonl").read_bytes())
    assert sum(chosen(after, "f").values()) == 20


def test_weights_without_total_take_what_needs_no_repeats(alpaca, glaive, tmp_path):
    manifest = sftpack.mix({"sources": [{"name": "a", "path": str(alpaca), "weight": 1},
                                        {"name": "g", "path": str(glaive), "weight": 1}]}, tmp_path)
    s = manifest["sources"]
    scarce = s["g"]["available"]  # 100 less glaive's exact duplicates
    assert s["g"]["out"] == s["g"]["sampled"] == scarce and s["g"]["repeated"] == 0  # the scarce source whole, once
    assert s["a"]["out"] == scarce and s["a"]["removed"]["not_sampled"] == s["a"]["available"] - scarce
    assert_balanced(manifest)


# ---------------------------------------------------------------- duplicates, eval, decontamination

def test_exact_and_near_duplicates_across_sources_keep_the_first(alpaca, tmp_path):
    records = read_real("alpaca_en_demo")[:300]
    near = json.loads(json.dumps(records[5]))
    words = near["messages"][-1]["content"].split()
    near["messages"][-1]["content"] = " ".join(words[:-2])  # the same answer less its last two words
    exact = json.loads(json.dumps(records[3])) | {"id": "copy"}
    other = write_jsonl(tmp_path / "other.jsonl", [chat("Name a colour of the rainbow.", "Indigo."), exact, near])
    manifest = sftpack.mix({"sources": [{"name": "a", "path": str(alpaca)}, {"name": "b", "path": str(other)}],
                            "dedup": {"near": {"threshold": 0.8}}}, tmp_path / "out")
    assert_balanced(manifest)
    removed = {r["row"]: r for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl") if r["source"] == "b"}
    assert removed[2]["reason"] == "exact_duplicate" and removed[2]["kept"] == "a:alpaca.jsonl:4"
    assert removed[3]["reason"] == "near_duplicate" and removed[3]["kept"] == "a:alpaca.jsonl:6"
    assert 0.8 <= removed[3]["jaccard"] < 1
    train = read_jsonl(Path(manifest["path"]) / "train.jsonl")
    keys = Counter(conversation_key(line) for line in train)
    assert keys[conversation_key(records[3])] == 1 and keys[conversation_key(records[5])] == 1
    assert manifest["sources"]["b"]["out"] == 1


def test_near_duplicates_are_decided_by_the_exact_jaccard_not_the_estimate(tmp_path):
    """Two variants of one 103-word answer, 0.81 and 0.79 from it in exact Jaccard: both within
    MinHash's noise at 128 permutations (sd ~0.03), so only the exact check separates them."""
    base = [f"word{i}" for i in range(103)]
    over, under = base + [f"over{i}" for i in range(24)], base + [f"under{i}" for i in range(26)]
    trigrams = [{tuple(["say", *ws][i:i + 3]) for i in range(len(ws) - 1)} for ws in (base, over, under)]
    expected = [len(trigrams[0] & t) / len(trigrams[0] | t) for t in trigrams[1:]]
    assert expected == [102 / 126, 102 / 128] and expected[0] > 0.8 > expected[1]
    from sftpack.mixing.dedup import signatures
    from sftpack.mixing.recipe import NearDedup
    from sftpack.mixing.text import shingles, turn_text, words

    records = [chat("Say", " ".join(ws)) for ws in (base, over, under)]
    signed = signatures([shingles(words(turn_text(r)), 3) for r in records], NearDedup(threshold=0.8))
    estimates = [signed[0].jaccard(signed[i]) for i in (1, 2)]
    assert estimates[0] < 0.8 or estimates[1] >= 0.8  # the estimate alone would decide at least one wrongly
    first = write_jsonl(tmp_path / "a.jsonl", records[:1])
    second = write_jsonl(tmp_path / "b.jsonl", records[1:])
    manifest = sftpack.mix({"sources": [{"name": "a", "path": str(first)}, {"name": "b", "path": str(second)}],
                            "dedup": {"near": {"threshold": 0.8}}}, tmp_path / "out")
    assert_balanced(manifest)
    (removed,) = read_jsonl(Path(manifest["path"]) / "removed.jsonl")
    assert (removed["id"], removed["reason"], removed["kept"]) == ("b:b.jsonl:1", "near_duplicate", "a:a.jsonl:1")
    assert removed["jaccard"] == round(expected[0], 4)
    train = read_jsonl(Path(manifest["path"]) / "train.jsonl")
    assert sorted(line["messages"][-1]["content"] for line in train) == sorted([" ".join(base), " ".join(under)])


def test_planted_benchmark_items_are_removed_with_the_ngram_named(alpaca, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q1", "question": QUESTIONS[0]},
                                                   {"id": "q2", "question": QUESTIONS[1]}])
    pq.write_table(pa.table({"problem": [QUESTIONS[2]]}), tmp_path / "bench.parquet")
    planted = [chat(QUESTIONS[0], "Three hours and twenty minutes."),  # verbatim
               chat("Here is a puzzle for you. " + QUESTIONS[1] + " Answer briefly.", "Fluorine."),  # embedded
               chat(QUESTIONS[2].upper().replace(" ", " ,  "), "Rayleigh scattering."),  # case and punctuation
               chat("Which element is the lightest?", "Hydrogen.")]  # clean
    source = write_jsonl(tmp_path / "planted.jsonl", planted)
    recipe = {"sources": [{"name": "p", "path": str(source)}, {"name": "a", "path": str(alpaca)}],
              "decontaminate": {"benchmarks": [str(bench), {"path": str(tmp_path / "bench.parquet")}]}}
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert_balanced(manifest)
    hits = {r["row"]: r for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl") if r["reason"] == "contaminated"}
    assert sorted(hits) == [1, 2, 3] and "contaminated" not in manifest["sources"]["a"]["removed"]
    assert hits[1]["item"] == "q1" and hits[1]["benchmark"] == str(bench)
    assert hits[2]["item"] == "q2" and hits[3]["benchmark"] == str(tmp_path / "bench.parquet")
    for row, question in zip((1, 2, 3), QUESTIONS):
        assert len(hits[row]["ngram"].split()) == 13 and hits[row]["ngram"] in " ".join(
            question.lower().replace(",", " ").replace("?", " ").replace(".", " ").split())
    report = sftpack.mix(recipe | {"decontaminate": recipe["decontaminate"] | {"mode": "report"}}, tmp_path / "out")
    listed = read_jsonl(Path(report["path"]) / "contamination.jsonl")
    assert [m["id"] for m in listed] == ["p:planted.jsonl:1", "p:planted.jsonl:2", "p:planted.jsonl:3"]
    assert report["sources"]["p"]["out"] == 4


def test_boilerplate_ngrams_above_max_df_never_match(tmp_path):
    shared = "please read the following question carefully and answer it with a single word only"
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"text": f"{shared} item {i}"} for i in range(3)])
    source = write_jsonl(tmp_path / "s.jsonl", [chat(shared.capitalize() + ": what is two plus two?", "Four."),
                                                chat("What is three plus three?", "Six.")])
    recipe = {"sources": [{"name": "s", "path": str(source)}],
              "decontaminate": {"benchmarks": [str(bench)], "max_ngram_df": 2}}
    assert sftpack.mix(recipe, tmp_path / "out")["sources"]["s"]["out"] == 2
    recipe["decontaminate"]["max_ngram_df"] = 3
    assert sftpack.mix(recipe, tmp_path / "out")["sources"]["s"]["removed"] == {"contaminated": 1}


def test_eval_splits_never_leak_into_train(tmp_path):
    fastchat = write_jsonl(tmp_path / "fastchat.jsonl", read_real("fastchat_dummy_conversation"))  # many repeats
    manifest = sftpack.mix({"sources": [{"name": "f", "path": str(fastchat), "eval": {"fraction": 0.1}}],
                            "dedup": {"exact": False}}, tmp_path / "out")
    assert_balanced(manifest)
    folder = Path(manifest["path"])
    held = {conversation_key(line) for line in read_jsonl(folder / "eval" / "f.jsonl")}
    assert len(read_jsonl(folder / "eval" / "f.jsonl")) == 50
    assert not held & {conversation_key(line) for line in read_jsonl(folder / "train.jsonl")}
    assert manifest["sources"]["f"]["removed"]["contaminated"] > 0  # the copies of eval records


# ---------------------------------------------------------------- filters, layouts, reuse

def test_filters_are_counted_by_name(model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("Say hi.", "Hi!", ""), ("Echo me.", "Echo me.", ""), ("Think first.", "<think> </think>Done.", ""),
            ("Привет, как дела у тебя сегодня?", "Хорошо, спасибо.", ""),
            ("Count to three.", "One, two, three. " * 40, ""), ("What is 2+2?", "<think>2+2=4</think>4", "")]
    pq.write_table(pa.table({"instruction": [r[0] for r in rows], "output": [r[1] for r in rows],
                             "input": [r[2] for r in rows]}), tmp_path / "alpaca.parquet")
    recipe = {"sources": [{"name": "s", "path": str(tmp_path / "alpaca.parquet"), "format": "alpaca"}],
              "filters": {"require_reasoning": True, "max_tokens": 60, "scripts": ["latin"]},
              "tokenizer": str(model_dir)}
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert_balanced(manifest)
    assert manifest["sources"]["s"]["removed"] == {"filter_answer_equals_prompt": 1, "filter_empty_think": 4}
    reasons = {r["row"]: r["reason"] for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl")}
    assert reasons == {1: "filter_empty_think", 2: "filter_answer_equals_prompt", 3: "filter_empty_think",
                       4: "filter_empty_think", 5: "filter_empty_think"}
    plain = sftpack.mix(recipe | {"filters": {"max_tokens": 60, "scripts": ["latin"]}}, tmp_path / "out")
    reasons = {r["row"]: r["reason"] for r in read_jsonl(Path(plain["path"]) / "removed.jsonl")}
    assert reasons == {2: "filter_answer_equals_prompt", 4: "filter_script", 5: "filter_max_tokens"}
    assert plain["sources"]["s"]["tokens"] == plain["totals"]["tokens"] > 0


def test_an_unchanged_recipe_is_reused_and_a_changed_one_rebuilds(alpaca, tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", read_real("alpaca_en_demo")[:40])
    import pyarrow as pa
    import pyarrow.parquet as pq

    benchmarks = tmp_path / "bench"  # a Parquet folder: its .parquet files are the benchmark
    benchmarks.mkdir()
    pq.write_table(pa.table({"question": QUESTIONS}), benchmarks / "items.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "s", "path": str(source), "epochs": 1.5}],
                                      "decontaminate": {"benchmarks": [str(benchmarks)]}}))
    first = sftpack.mix(recipe, tmp_path / "out")
    (benchmarks / "README.md").write_text("not read: the benchmark is items.parquet\n")
    again = sftpack.mix(recipe, tmp_path / "out")
    assert not first["reused"] and again["reused"] and again["path"] == first["path"]
    pq.write_table(pa.table({"question": QUESTIONS[:2]}), benchmarks / "items.parquet")
    assert sftpack.mix(recipe, tmp_path / "out")["path"] != first["path"]
    source.write_text(source.read_text() + json.dumps(chat("New question?", "New answer.")) + "\n")
    changed = sftpack.mix(recipe, tmp_path / "out")
    assert not changed["reused"] and changed["path"] != first["path"]
    (Path(changed["path"]) / "train.jsonl").write_text("tampered\n")
    assert not sftpack.mix(recipe, tmp_path / "out")["reused"]


def test_the_command_line_mixes_and_exits_2_on_a_bad_recipe(alpaca, tmp_path, capsys):
    from sftpack.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "s", "path": str(alpaca), "take": 10}]}))
    assert main(["mix", "--recipe", str(recipe), "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "10 training examples" in out[0] and Path(out[-1], "train.jsonl").is_file()
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "s", "path": str(alpaca), "take": 10, "weight": 1}]}))
    assert main(["mix", "--recipe", str(recipe), "--out-dir", str(tmp_path / "out")]) == 2
    assert "sources.0 (s): weight and take both given" in capsys.readouterr().err


BAD = [
    ({"path": "no/such.jsonl"}, "sources.0.path (s): no/such.jsonl: input file not found"),
    ({"weight": 1, "take": 5}, "sources.0 (s): weight and take both given; keep one of weight, take, epochs"),
    ({"weight": -1}, "sources.0.weight: -1 must be a finite number above 0"),
    ({"weight": float("nan")}, "sources.0.weight: nan must be a finite number above 0"),
    ({"format": "xml"}, "sources.0.format: 'xml' is not one of auto, messages, sharegpt, alpaca"),
    ({"path": "EMPTY"}, "sources.0.path (s) EMPTY: empty source, no valid record (2 read; rejected_"),
]


@pytest.mark.parametrize("change,message", BAD, ids=["path", "weight+take", "negative", "nan", "layout", "empty"])
def test_bad_recipes_give_one_clear_message_each(alpaca, tmp_path, change, message):
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"messages": []}, {"messages": "x"}])
    source = {"name": "s", "path": str(alpaca)} | change
    source["path"] = str(empty) if source["path"] == "EMPTY" else source["path"]
    with pytest.raises(SftpackError) as err:
        sftpack.mix({"sources": [source]}, tmp_path / "out")
    lines = str(err.value).replace("EMPTY", str(empty)).splitlines()
    assert len(lines) == 2 and lines[1].strip().startswith(message.replace("EMPTY", str(empty)))


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5])
def test_a_threshold_outside_0_1_is_refused(alpaca, tmp_path, threshold):
    with pytest.raises(SftpackError, match=rf"dedup.near.threshold: {threshold} is outside \(0, 1\]"):
        sftpack.mix({"sources": [{"name": "s", "path": str(alpaca)}], "dedup": {"near": {"threshold": threshold}}},
                    tmp_path)


def test_report_recipe_shows_the_mixture_before_and_after(tmp_path):
    records = read_real("alpaca_en_demo")[:60]
    near = json.loads(json.dumps(records[5]))
    near["messages"][-1]["content"] = " ".join(near["messages"][-1]["content"].split()[:-2])
    source = write_jsonl(tmp_path / "a.jsonl", records + [near, chat(QUESTIONS[0], "Three hours.")])
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q1", "question": QUESTIONS[0]}])
    recipe = {"sources": [{"name": "a", "path": str(source), "take": 30}], "dedup": {"near": {}},
              "decontaminate": {"benchmarks": [str(bench)]}}
    report = sftpack.report([], tmp_path / "report.html", recipe=recipe, mix_dir=tmp_path / "mix")
    assert report["shares"][0]["in"] == 62 and report["shares"][0]["out"] == 30
    assert report["contamination"][0]["benchmark"] == str(bench) and report["contamination"][0]["records removed"] == 1
    assert report["clusters"] == [{"kept": "a:a.jsonl:6", "members": 1}]
    page = (tmp_path / "report.html").read_text()
    assert "Largest near-duplicate clusters" in page and "a:a.jsonl:61" in page and "data:image/png" in page
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["out"] == 30


def test_the_recipe_schema_and_dataclasses_agree():
    from sftpack.io.layouts import FORMATS
    from sftpack.mixing import recipe as r

    schema = json.loads(r.SCHEMA_PATH.read_text())["properties"]
    assert tuple(schema["dedup"]["properties"]["near"]["properties"]["on"]["enum"]) == r.NEAR_ON
    assert tuple(schema["decontaminate"]["properties"]["mode"]["enum"]) == r.DECONTAMINATE_MODES
    assert tuple(schema["sources"]["items"]["properties"]["format"]["enum"]) == tuple(FORMATS)
    for key, cls in (("filters", r.FilterConfig), ("decontaminate", r.DecontamConfig)):
        assert set(schema[key]["properties"]) == {f.name for f in dataclasses.fields(cls)}, key
    assert set(schema["sources"]["items"]["properties"]) == {f.name for f in dataclasses.fields(r.SourceSpec)}
    assert set(schema) == {f.name for f in dataclasses.fields(r.Recipe)} - {"origin"}


# ---------------------------------------------------------------- decontamination on templated data

SYSTEM = ("You are Pip, a concise and friendly assistant made by the sftpack team. Answer every question "
          "carefully, and say so plainly when you do not know the answer.")
SIGNATURE = "Best regards, Pip, the friendly assistant made by the sftpack team, always here to help you out"


def templated(records: list[dict]) -> list[dict]:
    """Real conversations as many SFT sets are: one system prompt on every row, a signature under every answer."""
    out = []
    for record in records:
        messages = [{"role": "system", "content": SYSTEM}] + [
            m | {"content": m["content"] + "\n\n" + SIGNATURE} if m["role"] == "assistant" else m
            for m in record["messages"] if m["role"] != "system"]
        out.append({"messages": messages})
    return out


def test_a_shared_system_prompt_and_signature_are_not_contamination(tmp_path):
    """The alpaca conversations with a system prompt and a signature on every row, 5% held out, and
    a benchmark whose items share that boilerplate: only the 3 planted items go (recall 1, no false
    positive); the signature's 13-grams are common in the source, so they are no evidence."""
    rows = templated(read_real("alpaca_en_demo")[:300])
    for row, question in zip((10, 20, 30), QUESTIONS):
        rows[row - 1]["messages"][1]["content"] = f"My teacher asked this today. {question} Can you help?"
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": f"q{i}", "question": q} for i, q in enumerate(QUESTIONS)] + [
        {"id": "sys", "question": SYSTEM + " What is the boiling point of water at sea level?"},
        {"id": "sig", "question": "Explain photosynthesis in two sentences. " + SIGNATURE}])
    recipe = {"sources": [{"name": "s", "path": str(source), "eval": {"fraction": 0.05}}],
              "decontaminate": {"benchmarks": [str(bench)]}}
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert_balanced(manifest)
    assert manifest["sources"]["s"]["held_out"] == 15
    removed = read_jsonl(Path(manifest["path"]) / "removed.jsonl")
    assert manifest["sources"]["s"]["removed"] == {"contaminated": 3, "exact_duplicate": 1}  # alpaca repeats one row
    removed = [r for r in removed if r["reason"] == "contaminated"]
    assert {r["row"]: (r["benchmark"], r["item"]) for r in removed} == {
        10: (str(bench), "q0"), 20: (str(bench), "q1"), 30: (str(bench), "q2")}
    assert all(len(r["ngram"].split()) == 13 and r["ngram"] in " ".join(words_of(QUESTIONS[int(r["item"][1])]))
               for r in removed)
    # the same data with no n-gram counted as the data's boilerplate: the signature matches every row
    with pytest.raises(SftpackError, match=r"no training example \(300 read, 15 held out; removed: contaminated=285\)"):
        sftpack.mix(recipe | {"decontaminate": {"benchmarks": [str(bench)], "boilerplate_share": 1}}, tmp_path / "out")


def words_of(text: str) -> list[str]:
    from sftpack.mixing.text import words

    return words(text)


def test_eval_rows_remove_only_their_near_copies_on_a_templated_source(tmp_path):
    """fastchat's 500 persona conversations with one system prompt, 5% held out, an unrelated
    benchmark: the rows removed are those that ask an eval row's own question (answered in the same
    persona): the shared prompt, greeting and persona text are no evidence."""
    rows = templated(read_real("fastchat_dummy_conversation"))
    source = write_jsonl(tmp_path / "f.jsonl", rows)
    repo = Path(__file__).resolve().parent.parent
    manifest = sftpack.mix({"sources": [{"name": "f", "path": str(source), "eval": {"fraction": 0.05}}],
                            "decontaminate": {"benchmarks": [str(repo / "data" / "benchmarks" / "tiny-bench.jsonl")]}},
                           tmp_path / "out")
    assert_balanced(manifest)
    users = [tuple(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]
    common = {turn for turn, n in Counter(t for u in set(users) for t in u).items() if n > 10}  # greetings
    removed = read_jsonl(Path(manifest["path"]) / "removed.jsonl")
    assert manifest["sources"]["f"]["removed"] == {"contaminated": 5} and len(removed) == 5  # 1% of 475
    for entry in removed:
        item = int(entry["item"].rsplit(":", 1)[1])
        asked = set(users[entry["row"] - 1]) - common
        assert asked and asked == set(users[item - 1]) - common and entry["benchmark"] == "eval/f", entry
        assert entry["jaccard"] >= 0.8


def test_benchmark_field_and_messages_benchmarks(tmp_path):
    """`field:` names the item's text; a benchmark of messages records is matched on its user turns
    and answers, never on its system prompt."""
    bench_field = write_jsonl(tmp_path / "field.jsonl", [{"input": QUESTIONS[0], "question": "unused short one"}])
    bench_chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[1]},
                      {"role": "assistant", "content": "Fluorine, because its nucleus holds its electrons tightly."}]}])
    rows = [chat(QUESTIONS[0], "Three hours and twenty minutes."),
            chat("Answer this: " + QUESTIONS[1], "Fluorine."),
            chat(SYSTEM, "Understood, I will answer carefully."),  # the benchmark's system prompt as a user turn
            chat("Which element is the lightest?", "Hydrogen.")]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    manifest = sftpack.mix({"sources": [{"name": "s", "path": str(source)}],
                            "decontaminate": {"benchmarks": [{"path": str(bench_field), "field": "input"}, str(bench_chat)]}},
                           tmp_path / "out")
    removed = {r["row"]: r for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl")}
    assert sorted(removed) == [1, 2]
    assert removed[1]["benchmark"] == str(bench_field) and removed[2]["benchmark"] == str(bench_chat)
    with pytest.raises(SftpackError, match="no item with a messages, question"):
        sftpack.mix({"sources": [{"name": "s", "path": str(source)}],
                     "decontaminate": {"benchmarks": [{"path": str(bench_field), "field": "missing"}]}}, tmp_path / "out")


# ---------------------------------------------------------------- options

def test_near_dedup_on_prompt_or_response_compares_those_turns(tmp_path):
    def text(word: str) -> str:
        return " ".join(f"{word}{i}" for i in range(40))

    rows = [chat(text("prompt"), text("first")), chat(text("prompt") + " please", text("second")),  # prompts near
            chat(text("third"), text("answer")), chat(text("fourth"), text("answer") + " indeed")]  # answers near
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    removed = {}
    for on in ("prompt", "response", "all"):
        manifest = sftpack.mix({"sources": [{"name": "s", "path": str(source)}],
                                "dedup": {"near": {"threshold": 0.8, "on": on}}}, tmp_path / "out")
        removed[on] = {r["row"]: r["kept"] for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl")}
    assert removed == {"prompt": {2: "s:s.jsonl:1"}, "response": {4: "s:s.jsonl:3"}, "all": {}}


def test_empty_answer_filter_and_min_tokens(model_dir, tmp_path):
    rows = [chat("Say something.", "   "), chat("Hi", "Hello"), chat("Tell me about the moon.", "The moon orbits the Earth "
                                                                       "about once every twenty-seven days.")]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    recipe = {"sources": [{"name": "s", "path": str(source)}], "tokenizer": str(model_dir), "filters": {"min_tokens": 5}}
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert {r["row"]: r["reason"] for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl")} == {
        1: "filter_empty_answer", 2: "filter_min_tokens"}
    off = recipe | {"filters": {"empty_answer": False}}
    with pytest.raises(SftpackError, match=r"s.jsonl:1 \[empty_assistant\]"):  # then the conversation rule rejects it
        sftpack.mix(off, tmp_path / "out")
    allowed = sftpack.mix(off | {"allow_rejects": True}, tmp_path / "out")
    assert allowed["sources"]["s"]["removed"] == {"rejected_empty_assistant": 1}


def test_a_removed_record_is_never_a_clusters_keeper(tmp_path):
    """Row 1 is contaminated; row 2, its near duplicate, is kept (not removed in favour of a record
    that is not there), and row 3, row 2's exact copy, names row 2."""
    answer = " ".join(f"step{i}" for i in range(200))
    rows = [chat(QUESTIONS[0], answer), chat("Tell me.", answer), chat("Tell me.", answer)]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": QUESTIONS[0]}])
    manifest = sftpack.mix({"sources": [{"name": "s", "path": str(source)}], "dedup": {"near": {"threshold": 0.8}},
                            "decontaminate": {"benchmarks": [str(bench)]}}, tmp_path / "out")
    removed = {r["row"]: r for r in read_jsonl(Path(manifest["path"]) / "removed.jsonl")}
    from sftpack.mixing.dedup import exact_jaccards, shingle_hashes
    from sftpack.mixing.text import shingles, turn_text, words

    one, two = (shingle_hashes(shingles(words(turn_text(r)), 3)) for r in rows[:2])
    assert exact_jaccards(one, [two])[0] >= 0.8  # row 2 would be row 1's near duplicate
    assert sorted(removed) == [1, 3] and removed[1]["reason"] == "contaminated"
    assert (removed[3]["reason"], removed[3]["kept"]) == ("exact_duplicate", "s:s.jsonl:2")


# ---------------------------------------------------------------- errors and policies

def test_every_recipe_problem_comes_in_one_message(alpaca, tmp_path):
    recipe = {"sources": [{"name": "a", "path": str(alpaca), "weight": -1, "colour": "red"},
                          {"name": "b", "path": str(tmp_path / "missing.jsonl"), "take": 5, "epochs": 2},
                          {"name": "a", "path": str(alpaca), "take": "many"}],
              "dedup": {"near": {"threshold": 2}},
              "decontaminate": {"benchmarks": [str(tmp_path / "no-bench.jsonl")]},
              "filters": {"max_tokens": 10}}
    with pytest.raises(SftpackError) as err:
        sftpack.mix(recipe, tmp_path / "out")
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert lines == [  # the schema's, then the checks across keys, then the paths
        "sources.0.colour: unknown key; valid keys here: columns, epochs, eval, format, name, path, repeat, split, take, weight",
        "sources.2.take: 'many' is not of type 'integer'",
        "sources.0.weight: -1 must be a finite number above 0 (a share of the mixture); fix it or remove the key",
        "sources.1 (b): take and epochs both given; keep one of weight, take, epochs",
        "sources: the name 'a' is given 2 times; names must be unique",
        "dedup.near.threshold: 2 is outside (0, 1]; a Jaccard similarity such as 0.8",
        "filters.max_tokens: needs tokenizer (a tokenizer folder) to count tokens",
        f"sources.1.path (b): {tmp_path / 'missing.jsonl'}: input file not found",
        f"decontaminate.benchmarks.0: {tmp_path / 'no-bench.jsonl'}: benchmark file not found"]


def test_total_below_take_and_an_empty_weighted_source_are_errors(alpaca, tmp_path):
    with pytest.raises(SftpackError, match="total 40 is below the 50 examples that take and epochs sources give"):
        sftpack.mix({"sources": [{"name": "a", "path": str(alpaca), "take": 50}, {"name": "w", "path": str(alpaca), "weight": 1}],
                     "total": 40, "dedup": {"exact": False}}, tmp_path / "out")
    planted = write_jsonl(tmp_path / "planted.jsonl", [chat(QUESTIONS[0], "Three hours.")])
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": QUESTIONS[0]}])
    with pytest.raises(SftpackError, match=r"weighted source\(s\) p have no example left after hold-out and removals"):
        sftpack.mix({"sources": [{"name": "a", "path": str(alpaca), "weight": 1}, {"name": "p", "path": str(planted), "weight": 1}],
                     "total": 20, "decontaminate": {"benchmarks": [str(bench)]}}, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir()]  # nothing half-written


def test_rejected_lines_stop_the_mix_unless_allowed(alpaca, tmp_path, capsys):
    from sftpack.cli import main

    lines = [json.dumps(chat(f"Question {i}?", f"Answer {i}.")) for i in range(50)]
    lines[6] = '{"messages": [{"role": "user", "content": "cut off'
    lines[20] = json.dumps({"messages": [{"role": "user", "content": "No answer here."}]})
    source = tmp_path / "s.jsonl"
    source.write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "s", "path": str(source)}]}))
    assert main(["mix", "--recipe", str(recipe), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "2 of 50 records failed" in err and "invalid_json=1" in err and "no_assistant_turn=1" in err
    assert f"{source}:7 [invalid_json]" in err and f"{source}:21 [no_assistant_turn]" in err and "--allow-rejects" in err
    assert main(["mix", "--recipe", str(recipe), "--out-dir", str(tmp_path / "out"), "--allow-rejects"]) == 0
    out, err = capsys.readouterr()
    assert "48 training examples" in out and "2 records failed" in err and "invalid_json=1, no_assistant_turn=1" in err
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "s", "path": str(source)}], "allow_rejects": True}))
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert manifest["reused"] and manifest["sources"]["s"]["removed"] == {"rejected_invalid_json": 1,
                                                                          "rejected_no_assistant_turn": 1}


def test_a_mixture_with_no_training_example_is_an_error(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": f"Hello {i}"}]} for i in range(3)])
    with pytest.raises(SftpackError) as err:
        sftpack.mix({"sources": [{"name": "s", "path": str(source)}], "allow_rejects": True}, tmp_path / "out")
    assert "no training example (3 read, 0 held out; removed: rejected_no_assistant_turn=3)" in str(err.value)
    assert err.value.exit_code == 1 and not list((tmp_path / "out").iterdir())


def test_take_beyond_what_is_left_says_its_repeats_and_repeat_false_caps(alpaca, tmp_path, capsys):
    from sftpack.cli import main

    small = write_jsonl(tmp_path / "small.jsonl", read_real("alpaca_en_demo")[:113])
    recipe = tmp_path / "recipe.yaml"
    sources = [{"name": "big", "path": str(alpaca), "take": 100}, {"name": "small", "path": str(small), "take": 300}]
    recipe.write_text(yaml.safe_dump({"sources": sources, "decontaminate": {"eval_splits": False}, "dedup": {"exact": False}}))
    assert main(["mix", "--recipe", str(recipe), "--out-dir", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["warning: small: take 300 needs 300 examples and 113 are left after hold-out and "
                                "removals: 187 repeats; `repeat: false` caps it at 113"]
    sources[1]["repeat"] = False
    recipe.write_text(yaml.safe_dump({"sources": sources, "decontaminate": {"eval_splits": False}, "dedup": {"exact": False}}))
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert (manifest["sources"]["small"]["out"], manifest["sources"]["small"]["repeated"]) == (113, 0)
    assert manifest["sources"]["big"]["out"] == 100


def test_a_killed_runs_leftover_is_removed_with_one_line(alpaca, tmp_path, capsys):
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "out" / f".incomplete-{ended.stdout.strip()}-0123456789abcdef.x1y2"
    (leftover / ".spill").mkdir(parents=True)
    live = tmp_path / "out" / f".incomplete-{os.getpid()}-fedcba9876543210.a1b2"  # this process: still running
    live.mkdir()
    sftpack.mix({"sources": [{"name": "a", "path": str(alpaca), "take": 5}]}, tmp_path / "out")
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "unfinished" in line] == [
        f"sftpack: removed 1 unfinished output of runs that ended (process {ended.stdout.strip()}) from "
        f"{tmp_path / 'out'}: {leftover.name}"]
    assert not leftover.exists() and live.exists()


# ---------------------------------------------------------------- the recipes the docs show

def test_the_demo_recipe_mixes_and_the_readme_recipe_parses(model_dir, tmp_path):
    import re
    import subprocess
    import sys

    from sftpack.mixing.recipe import build_recipe

    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(repo / "data" / "generate_demo.py"), "--out-dir", str(tmp_path / "demo")],
                   check=True, capture_output=True)
    text = (repo / "configs" / "demo-mix.yaml").read_text()
    text = text.replace("data/demo/", f"{tmp_path / 'demo'}/").replace("tests/data/real/", f"{repo}/tests/data/real/")
    text = text.replace("data/benchmarks/", f"{repo}/data/benchmarks/").replace("models/smollm2-135m-instruct", str(model_dir))
    recipe = tmp_path / "demo-mix.yaml"
    recipe.write_text(text)
    manifest = sftpack.mix(recipe, tmp_path / "out")
    assert_balanced(manifest)
    s = manifest["sources"]
    assert (s["pip"]["held_out"], s["alpaca"]["held_out"]) == (20, 20)
    assert s["pip"]["out"] == 3 * s["alpaca"]["out"] + (s["pip"]["out"] - 3 * s["alpaca"]["out"]) and \
        abs(s["pip"]["out"] / s["alpaca"]["out"] - 3) < 0.02  # weighted 3:1
    removed = read_jsonl(Path(manifest["path"]) / "removed.jsonl")
    pip = [r for r in removed if r["source"] == "pip" and r["reason"] == "contaminated"]
    assert pip and all(r["benchmark"] == "eval/pip" and r["jaccard"] == 1.0 for r in pip)  # copies of eval rows only
    assert len(pip) < 0.05 * s["pip"]["in"]  # the shared persona and signature remove nothing
    # the README's recipe, as printed: every key it shows is one the recipe takes
    readme = (repo / "README.md").read_text()
    block = re.search(r"## Mixtures\n.*?```yaml\n(.*?)```", readme, re.S).group(1)
    from sftpack.config.run_config import parse_yaml

    example = build_recipe(parse_yaml(block), "README.md", check_paths=False)
    assert [(x.name, x.weight, x.take, x.epochs) for x in example.sources] == [
        ("pip", 3, None, None), ("alpaca", 1, None, None), ("tools", None, 5000, None), ("math", None, None, 2.5)]
    assert example.sources[3].columns.roles and example.total == 100000 and example.dedup.near.on == "all"
    assert example.decontaminate.benchmarks[1].field == "input" and example.filters.scripts == ("latin",)


# ---------------------------------------------------------------- tasks and workers

WORKERS_SCRIPT = r"""
import gzip, json, sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from rensa import RMinHash

# rensa's batch call runs on a rayon pool; a worker forked after it ran must not need that pool
RMinHash.from_token_sets([[f"w{i} {j}" for j in range(40)] for i in range(3000)], num_perm=128, seed=1)

from conftest import REAL_DATA, REAL_NAMES, near_duplicate_sources
from sftpack.execution import Execution
from sftpack.mixing import stage, tasks

tasks.BLOCK_LINES, tasks.COMPONENT_LINES = 150, 20  # many tasks from a small mixture
work = Path(sys.argv[2])
sources = []
for name in REAL_NAMES:
    (work / f"{name}.jsonl").write_bytes(gzip.decompress((REAL_DATA / f"{name}.jsonl.gz").read_bytes()))
    sources.append({"name": name, "path": str(work / f"{name}.jsonl")})
chains, bench = near_duplicate_sources(work / "chains")
recipe = {"sources": sources + [{"name": p.stem, "path": str(p)} for p in chains], "eval": {"count": 5},
          "dedup": {"near": {"threshold": 0.8}}, "decontaminate": {"benchmarks": [str(bench)]}}
for workers in (1, 2):
    manifest = stage.run(recipe, work / f"workers{workers}", execution=Execution(workers=workers))
    print(json.dumps({"path": manifest["path"], "outputs": manifest["outputs"], "totals": manifest["totals"]}))
"""


def test_any_worker_count_writes_the_same_mixture_after_rensas_thread_pool_ran(tmp_path):
    """Pass 3 runs as tasks (screen blocks, bucket keys, deduplicate components) on forked workers:
    one worker and two give the same bytes, and a worker forked after its parent ran rensa's
    thread pool does not hang."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", WORKERS_SCRIPT, str(tests), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads(line) for line in done.stdout.splitlines())
    assert one["outputs"] == two["outputs"] and one["totals"] == two["totals"]
    assert Path(one["path"]).name == Path(two["path"]).name
    removed = one["totals"]["removed"]
    assert removed["near_duplicate"] > 150 and removed["exact_duplicate"] > 10 and removed["contaminated"] > 0
