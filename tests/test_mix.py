"""`sftpack mix`: a recipe's sources -> one clean, decontaminated, weighted training set.

Real conversations (tests/data/real) in small files; every mixture's counts are checked to balance.
"""

from __future__ import annotations

import dataclasses
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

def test_take_epochs_and_weights_give_exact_counts_reproducibly(alpaca, glaive, tmp_path):
    recipe = {"sources": [{"name": "a", "path": str(alpaca), "weight": 3},
                          {"name": "g", "path": str(glaive), "weight": 1},
                          {"name": "t", "path": str(glaive), "take": 250},
                          {"name": "e", "path": str(alpaca), "epochs": 0.5}],
              "dedup": {"exact": False}, "total": 600, "eval": {"count": 5}, "seed": 7}
    first = sftpack.mix(recipe, tmp_path / "one")
    assert_balanced(first)
    s = first["sources"]
    assert s["t"]["out"] == 250 and s["t"]["repeated"] == 250 - s["t"]["available"]  # whole repeats + a sample
    assert s["e"]["out"] == math.floor(0.5 * s["e"]["available"] + 0.5) and s["e"]["repeated"] == 0
    weighted = 600 - 250 - s["e"]["out"]
    assert (s["a"]["out"], s["g"]["out"]) == (round(weighted * 3 / 4), weighted - round(weighted * 3 / 4))
    assert first["totals"]["out"] == 600
    again = sftpack.mix(recipe, tmp_path / "two")
    assert (Path(again["path"]) / "train.jsonl").read_bytes() == (Path(first["path"]) / "train.jsonl").read_bytes()
    other = sftpack.mix(recipe | {"seed": 8}, tmp_path / "one")
    assert other["path"] != first["path"] and other["totals"]["out"] == 600
    assert (Path(other["path"]) / "train.jsonl").read_bytes() != (Path(first["path"]) / "train.jsonl").read_bytes()


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
    first = write_jsonl(tmp_path / "a.jsonl", [chat("Say", " ".join(base))])
    second = write_jsonl(tmp_path / "b.jsonl", [chat("Say", " ".join(over)), chat("Say", " ".join(under))])
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
    source = write_jsonl(tmp_path / "s.jsonl", [chat(shared.capitalize() + ": what is two plus two?", "Four.")])
    recipe = {"sources": [{"name": "s", "path": str(source)}],
              "decontaminate": {"benchmarks": [str(bench)], "max_ngram_df": 2}}
    assert sftpack.mix(recipe, tmp_path / "out")["sources"]["s"]["out"] == 1
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


def test_deduplicating_per_component_decides_what_one_pass_decides(tmp_path):
    """The --ray route's steps (pipeline/mixing/near_graph.py), run here in one process: classes and
    band keys, buckets per band key, their components, then mixing.dedup.deduplicate per component,
    remove the same records, naming the same kept record and Jaccard, as one pass over all of them."""
    from collections import defaultdict

    import numpy as np

    from conftest import near_duplicate_sources
    from sftpack.checks.conversation_key import conversation_hash
    from sftpack.mixing.dedup import deduplicate, exact_jaccards, shingle_hashes
    from sftpack.mixing.near_graph import Components, bucket_members, line_keys
    from sftpack.mixing.recipe import DedupConfig, NearDedup
    from sftpack.mixing.text import shingles, turn_text, words

    paths, _ = near_duplicate_sources(tmp_path)
    records = [record | {"source": path.stem, "input": path.name, "row": row}  # what record_id names
               for path in paths for row, record in enumerate(read_jsonl(path), 1)]
    cfg = DedupConfig(exact=True, near=NearDedup(threshold=0.8, ngram=3))
    want = deduplicate(records, cfg)

    classes, keys = line_keys(records, cfg.near)
    buckets = defaultdict(list)
    for i, record_keys in enumerate(keys):
        for key in record_keys + [conversation_hash(records[i])]:  # exact copies may differ in text
            buckets[key].append(i)
    components = Components(len(records))
    for lines in buckets.values():
        components.union(np.array(bucket_members(np.array(lines), np.array([classes[i] for i in lines], dtype=object))))
    first = {}
    reps = np.array([first.setdefault(klass, i) for i, klass in enumerate(classes)])
    got = [None] * len(records)
    groups = components.groups(np.arange(len(records)), reps)
    for group in groups:
        for ordinal, removal in zip(group, deduplicate([records[o] for o in group], cfg)):
            got[ordinal] = removal
    assert got == want
    assert 20 < len(groups) < len(records) // 2  # split into components, most holding several records
    removed = [i for i, w in enumerate(want) if w is not None and w[0] == "near_duplicate"]
    assert len(removed) > 150 and sum(want[i][1]["jaccard"] == 1.0 for i in removed) > 10  # same words, other case
    assert sum(w is not None and w[0] == "exact_duplicate" for w in want) > 10
    trips = [i for i, r in enumerate(records) if r["messages"][0]["content"].startswith("Plan trip")]
    copies = [i for i in trips if records[i]["source"] == "second"]
    assert len(copies) == 4 and all(want[i][0] == "exact_duplicate" for i in copies)
    assert len({classes[i] for i in trips}) == 8  # the copies' text differs: only the exact key joins them
    hashes = [shingle_hashes(shingles(words(turn_text(r)), 3)) for r in records]
    order_matters = [i for i, w in enumerate(want) if w is None and any(
        exact_jaccards(hashes[i], [hashes[j]])[0] >= 0.8 for j in removed if j < i)]
    assert len(order_matters) > 5  # kept although near an earlier record: that one was removed itself
