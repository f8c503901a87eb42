"""pack: packing invariants, shard folders, manifests, fingerprint reuse, the TRL hand-off."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sftpack.templates.chat_template import ChatRenderer
from sftpack.templates.masking import encode_batch
from sftpack.packing.stage import PackConfig, run
from sftpack.packing.bins import best_fit_decreasing, lower_bound_rows, one_per_row
from sftpack.store.shards import read_shard, row_invariant_errors, verify_folder
from sftpack.cli import main as cli


def _subset(real_data, tmp_path, name, count):
    """First `count` lines of a real dataset, as a file of our own."""
    out = tmp_path / f"{name}.jsonl"
    with open(real_data / f"{name}.jsonl", "rb") as src:
        out.write_bytes(b"".join(line for _, line in zip(range(count), src)))
    return out


@pytest.fixture(scope="module")
def real_inputs(real_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    return [
        _subset(real_data, tmp, "alpaca_en_demo", 300),
        _subset(real_data, tmp, "fastchat_dummy_conversation", 200),
        _subset(real_data, tmp, "glaive_toolcall_en_demo", 100),
    ]


@pytest.fixture(scope="module")
def packed(real_inputs, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    manifest = run(real_inputs, out, PackConfig(tokenizer=str(model_dir), max_length=1024))
    return manifest


# ---------------------------------------------------------------- bin packing

def test_bfd_places_every_item_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1025, size=5000)
    bins = best_fit_decreasing(lengths, 1024)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert max(int(lengths[b].sum()) for b in bins) <= 1024
    # BFD is within 11/9 OPT + 1 in theory; on many small items it is close to the bound.
    assert len(bins) <= 1.02 * lower_bound_rows(int(lengths.sum()), 1024) + 1
    assert bins == best_fit_decreasing(lengths, 1024)  # deterministic


def test_bfd_takes_the_tightest_bin():
    # 6 opens a bin (4 left), 5 opens a bin (5 left); 4 must go beside 6 (exact fit), not 5.
    bins = best_fit_decreasing(np.array([6, 5, 4]), 10)
    assert bins == [[0, 2], [1]]
    assert best_fit_decreasing(np.array([5, 5, 5, 5]), 10) == [[0, 1], [2, 3]]


def test_bfd_rejects_items_longer_than_capacity():
    with pytest.raises(ValueError):
        best_fit_decreasing(np.array([3, 11]), 10)
    assert one_per_row(np.array([3, 4])) == [[0], [1]]


# ---------------------------------------------------------------- shard folders

def test_packed_folder_loads_and_obeys_row_invariants(packed):
    folder = packed["path"]
    ds = datasets.load_from_disk(folder)
    assert ds.column_names == ["input_ids", "labels", "seq_lengths", "example_ids"]
    assert len(ds) == packed["totals"]["rows"]
    for row in ds:
        assert len(row["input_ids"]) == len(row["labels"]) == sum(row["seq_lengths"]) <= 1024
        assert len(row["seq_lengths"]) == len(row["example_ids"])
        ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
        assert np.all((labels == -100) | (labels == ids))
    table = read_shard(next(p for p in __import__("pathlib").Path(folder).glob("data-*.arrow")))
    assert row_invariant_errors(table, 1024) == []
    assert verify_folder(folder) == []


def test_manifest_accounts_for_every_example(packed, real_inputs):
    t = packed["totals"]
    assert t["examples_read"] == 600
    assert t["examples_packed"] + sum(t["dropped"].values()) == 600
    assert t["rows"] >= t["lower_bound_rows"]
    assert t["packing_efficiency"] == pytest.approx(t["tokens"] / (t["rows"] * 1024), abs=1e-6)
    assert [i["lines"] for i in packed["inputs"]] == [300, 200, 100]
    assert sum(s["rows"] for s in packed["shards"]) == t["rows"]
    assert sum(s["trained_tokens"] for s in packed["shards"]) == t["trained_tokens"]
    assert packed["tokenizer"]["chat_template_sha256"]
    stats = pq.read_table(f"{packed['path']}/stats.parquet").to_pylist()
    assert len(stats) == 600
    assert sum(1 for s in stats if s["dropped"] is None) == t["examples_packed"]
    assert sum(s["tokens"] for s in stats if s["dropped"] is None) == t["tokens"]
    assert {s["source"] for s in stats} >= {"alpaca_en_demo", "fastchat_dummy_conversation"} or len(
        {s["source"] for s in stats}) >= 2


def test_packed_sequences_equal_standalone_encoding(packed, real_inputs, smol_tokenizer):
    """Each packed sequence is exactly the example encoded alone: no drift, same mask."""
    ds = datasets.load_from_disk(packed["path"])
    records = {}
    for path in real_inputs:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["id"]] = record
    renderer = ChatRenderer(smol_tokenizer, None)
    for row in ds.select(range(min(5, len(ds)))):
        start = 0
        for example_id, length in zip(row["example_ids"], row["seq_lengths"]):
            record = records[example_id]
            [alone] = encode_batch(renderer, smol_tokenizer, [{"messages": record["messages"],
                                                               "tools": record.get("tools")}])[0].sequences
            text = smol_tokenizer.apply_chat_template(record["messages"], tools=record.get("tools"), tokenize=False)
            plain = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert row["input_ids"][start:start + length] == plain == alone.input_ids.tolist()
            assert row["labels"][start:start + length] == alone.labels.tolist()
            start += length


# ---------------------------------------------------------------- reuse and invalidation

def test_rerun_reuses_and_any_change_rebuilds(real_inputs, model_dir, tmp_path, capsys):
    args = [str(p) for p in real_inputs[:2]] + ["--out-dir", str(tmp_path), "--tokenizer", str(model_dir),
                                                "--max-length", "512"]
    assert cli(["pack", *args]) == 0
    first = capsys.readouterr().out.strip().splitlines()
    assert cli(["pack", *args]) == 0
    second = capsys.readouterr().out.strip().splitlines()
    assert first[-1] == second[-1]  # last line: the folder
    assert "reused" in second[0] and "reused" not in first[0]

    assert cli(["pack", *args[:-1], "1024"]) == 0  # another max length
    other_length = capsys.readouterr().out.strip().splitlines()[-1]

    changed = tmp_path / "changed" / real_inputs[0].name
    changed.parent.mkdir()
    data = bytearray(real_inputs[0].read_bytes())
    data[data.index(b'"content": "') + 12] ^= 0x01  # flip one bit of one character
    changed.write_bytes(bytes(data))
    assert cli(["pack", str(changed), *args[1:]]) == 0
    other_input = capsys.readouterr().out.strip().splitlines()[-1]

    template = tmp_path / "t.jinja"
    template.write_text(open(model_dir / "chat_template.jinja").read().replace("helpful AI", "helpful"))
    assert cli(["pack", *args, "--chat-template", str(template)]) == 0
    other_template = capsys.readouterr().out.strip().splitlines()[-1]
    assert len({first[-1], other_length, other_input, other_template}) == 4

    assert cli(["pack", *args, "--num-proc", "2"]) == 0  # num_proc does not change the output
    assert "reused" in capsys.readouterr().out


def test_row_features_are_what_datasets_derives_from_the_row_schema():
    from sftpack.store.shards import ROW_SCHEMA, row_features

    assert row_features() == datasets.Features.from_arrow_schema(ROW_SCHEMA).to_dict()


def test_top_level_help_imports_no_stage():
    code = ("import sys; from sftpack.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('stages.', 'numpy', 'pyarrow', 'polars')) "
            "and m != 'sftpack.cli'))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines()[-1] == "[]"
    assert "pack" in shown.stdout and "report" in shown.stdout  # every stage is still listed


def test_reuse_is_decided_from_file_hashes_without_loading_the_tokenizer(real_inputs, model_dir, tmp_path):
    tok = tmp_path / "tok"  # the tokenizer files only, in a folder of our own
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        (tok / name).write_bytes((model_dir / name).read_bytes())
    cfg = PackConfig(tokenizer=str(tok), max_length=512)
    first = run(real_inputs[:1], tmp_path / "out", cfg)
    assert first["tokenizer"]["vocab_sha256"]  # the full identity is still recorded (train checks it)
    assert set(first["tokenizer"]["files_sha256"]) == {"tokenizer.json", "tokenizer_config.json",
                                                       "chat_template.jinja", "config.json"}
    code = ("import sys; from sftpack.packing.stage import PackConfig, run; "
            f"m = run([{str(real_inputs[0])!r}], {str(tmp_path / 'out')!r}, PackConfig(tokenizer={str(tok)!r}, "
            "max_length=512)); print(m['reused'], sorted({'transformers', 'jinja2', 'torch', 'pandas', 'polars', "
            "'jsonschema', 'tokenizers', 'sftpack.packing.encode', 'numpy', 'pyarrow'} & set(sys.modules)))")
    reused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert reused.stdout.split() == ["True", "[]"]

    moved = tmp_path / "elsewhere" / "tok"  # the folder's path is not part of the fingerprint
    moved.parent.mkdir()
    tok.rename(moved)
    assert run(real_inputs[:1], tmp_path / "out", dataclasses.replace(cfg, tokenizer=str(moved)))["reused"]
    config = json.loads((moved / "tokenizer_config.json").read_text())
    (moved / "tokenizer_config.json").write_text(json.dumps(config, indent=1))  # same meaning, other bytes
    again = run(real_inputs[:1], tmp_path / "out", dataclasses.replace(cfg, tokenizer=str(moved)))
    assert not again["reused"] and again["fingerprint"] != first["fingerprint"]


def test_any_number_of_workers_writes_the_same_files(real_inputs, model_dir, tmp_path, monkeypatch):
    """1 worker runs every range in this process, 2 and 3 fork; the ranges differ in size with the
    workers (io.ranges.byte_ranges) and the files do not."""
    from sftpack.execution import Execution
    from sftpack.execution.executors import LocalExecutor
    from sftpack.io.ranges import byte_ranges
    from sftpack.io.readers import ReadOptions
    from sftpack.packing import steps

    cfg = PackConfig(tokenizer=str(model_dir), max_length=768, batch_size=64)
    sources, _ = ReadOptions().open_each(real_inputs)
    small = 64 << 10  # so that these small files are cut: pack's own minimum range is 1 MB
    assert len(byte_ranges(sources, 3, small)) > len(byte_ranges(sources, 1, small)) > len(sources)
    monkeypatch.setattr(steps, "MIN_RANGE_BYTES", small)
    runs = {n: run(real_inputs, tmp_path / str(n), cfg, execution=Execution(workers=n)) for n in (1, 2, 3)}
    assert {m["fingerprint"] for m in runs.values()} == {runs[1]["fingerprint"]}
    assert [m["engine"] for m in runs.values()] == [LocalExecutor(n).describe() for n in (1, 2, 3)]
    files = {n: {p.name: p.read_bytes() for p in Path(m["path"]).iterdir() if p.name != "manifest.json"}
             for n, m in runs.items()}
    assert "stats.parquet" in files[1] and files[1] == files[2] == files[3]


def test_corrupt_shard_is_detected_and_rebuilt(real_inputs, model_dir, tmp_path, capsys):
    cfg = PackConfig(tokenizer=str(model_dir), max_length=512, shard_tokens=20_000)
    manifest = run(real_inputs[:1], tmp_path, cfg)
    assert len(manifest["shards"]) > 1
    shard = tmp_path / manifest["fingerprint"] / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_folder(manifest["path"])
    assert len(problems) == 1 and manifest["shards"][1]["file"] in problems[0] and "sha256" in problems[0]
    assert cli(["verify", manifest["path"]]) == 1
    again = run(real_inputs[:1], tmp_path, cfg)
    assert not again["reused"] and verify_folder(again["path"]) == []
    assert cli(["verify", again["path"]]) == 0


def test_too_long_examples_are_dropped_or_truncated(real_inputs, model_dir, tmp_path):
    drop = run(real_inputs[:1], tmp_path, PackConfig(tokenizer=str(model_dir), max_length=128))
    cut = run(real_inputs[:1], tmp_path, PackConfig(tokenizer=str(model_dir), max_length=128, truncation="truncate"))
    too_long = drop["totals"]["dropped"]["too_long"]
    assert too_long > 0 and drop["totals"]["truncated"] == 0
    newly_empty = cut["totals"]["dropped"].get("no_trained_tokens", 0) - drop["totals"]["dropped"].get("no_trained_tokens", 0)
    assert cut["totals"]["truncated"] + newly_empty == too_long
    assert cut["totals"]["examples_packed"] == drop["totals"]["examples_packed"] + cut["totals"]["truncated"]
    ds = datasets.load_from_disk(cut["path"])
    assert max(len(r) for r in ds["input_ids"]) <= 128


def test_strategy_none_writes_one_example_per_row(real_inputs, model_dir, tmp_path):
    manifest = run(real_inputs[:1], tmp_path, PackConfig(tokenizer=str(model_dir), max_length=1024, strategy="none"))
    ds = datasets.load_from_disk(manifest["path"])
    assert len(ds) == manifest["totals"]["examples_packed"]
    assert all(len(s) == 1 for s in ds["seq_lengths"])


def test_bad_inputs_give_clear_errors(model_dir, tmp_path, capsys):
    assert cli(["pack", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path), "--tokenizer", str(model_dir)]) == 2
    assert "missing.jsonl: input file not found" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli(["pack", str(empty), "--out-dir", str(tmp_path), "--tokenizer", str(model_dir)]) == 2
    assert f"{empty}: no records" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # nothing half-written


# ---------------------------------------------------------------- the hand-off to TRL

def test_packed_row_loss_through_trl_collator_equals_sequences_alone(packed, tiny_model_dir):
    """The padding-free collator's position_ids keep packed sequences apart: the loss of a
    packed row equals the token-weighted loss of its sequences run one by one."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    ds = datasets.load_from_disk(packed["path"])
    row = next(r for r in ds if len(r["seq_lengths"]) >= 3)
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([row])
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        total_loss, total_tokens, start = 0.0, 0, 0
        for length in row["seq_lengths"]:
            ids = torch.tensor([row["input_ids"][start:start + length]])
            labels = torch.tensor([row["labels"][start:start + length]])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[start:start + length], alone, atol=1e-4, rtol=1e-4)
            n = int((labels[0, 1:] != -100).sum())
            if n:
                total_loss += model(input_ids=ids, labels=labels, use_cache=False).loss.item() * n
                total_tokens += n
            start += length
        packed_loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            labels=batch["labels"], use_cache=False).loss.item()
    assert packed_loss == pytest.approx(total_loss / total_tokens, rel=1e-4)


def test_pack_tables_match_their_pandera_schemas(packed):
    import polars as pl

    from sftpack.schemas.tables import ExampleStats, PackedRowLengths, packed_row_lengths, validate_table

    validate_table(ExampleStats, pl.read_parquet(f"{packed['path']}/stats.parquet"), "stats.parquet")
    rows = pl.from_arrow(datasets.load_from_disk(packed["path"]).data.table)
    validate_table(PackedRowLengths, packed_row_lengths(rows, 1024), "packed rows")
    with pytest.raises(Exception, match="within_max_length"):
        validate_table(PackedRowLengths, packed_row_lengths(rows, 64), "packed rows")


def test_packed_folder_is_the_one_reader(packed, tmp_path):
    from sftpack.store.packed_folder import PackedFolder

    folder = PackedFolder.at(packed["path"])
    assert folder is not None and folder.verify() == []
    assert folder.dataset().num_rows == folder.totals["rows"] == packed["totals"]["rows"]
    assert folder.stats(["dropped"]).num_rows == folder.totals["examples_read"]
    assert folder.options["max_length"] == packed["options"]["max_length"]
    assert PackedFolder.holds_one(packed["path"]) and not PackedFolder.holds_one(tmp_path)
    assert PackedFolder.at(tmp_path) is None  # no manifest: not packed, or not finished


@pytest.mark.parametrize("gather_files", [1, 256])
def test_gathered_rows_equal_an_in_memory_gather(tmp_path, monkeypatch, gather_files):
    """Rows gathered through chunk files (one pass per `gather_files` chunks, several spill files)
    hold exactly the sequences an in-memory take gives, in row order; no scratch file is left."""
    import pyarrow as pa

    from sftpack.packing import rows as pack_rows
    from sftpack.packing.encode import SPILL_SCHEMA

    monkeypatch.setattr(pack_rows, "GATHER_FILES", gather_files)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=900)
    sequences = [rng.integers(0, 50_000, size=n, dtype=np.int32) for n in lengths]
    paths = []
    for part, (start, stop) in enumerate([(0, 250), (250, 251), (251, 900)]):  # three spill files
        paths.append(tmp_path / f"spill-{part}.arrow")
        with pa.OSFile(str(paths[-1]), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
            for low in range(start, stop, 64):  # several record batches each
                chosen = range(low, min(low + 64, stop))
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [pa.array([sequences[i] for i in chosen], pa.list_(pa.int32())),
                     pa.array([np.where(sequences[i] % 3 == 0, -100, sequences[i]) for i in chosen], pa.list_(pa.int32())),
                     pa.array([f"ex{i}" for i in chosen])], schema=SPILL_SCHEMA))
    bins = best_fit_decreasing(lengths[:850], 64)  # the last 50 sequences belong to no row
    chunks = pack_rows.row_chunks(range(3, len(bins)), chunk_rows=7)  # rows 0-2 are not asked for
    batches = list(pack_rows.gathered_batches(paths, bins, chunks, tmp_path / "scratch"))

    assert [b.num_rows for b in batches] == [len(c) for c in chunks]
    rows = [row for batch in batches for row in batch.to_pylist()]
    for row, wanted in zip(rows, bins[3:], strict=True):
        assert row["example_ids"] == [f"ex{i}" for i in wanted]
        assert row["seq_lengths"] == [int(lengths[i]) for i in wanted]
        assert row["input_ids"] == [int(t) for i in wanted for t in sequences[i]]
        assert row["labels"] == [-100 if t % 3 == 0 else int(t) for i in wanted for t in sequences[i]]
    assert list((tmp_path / "scratch").iterdir()) == []
