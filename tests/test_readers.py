"""pipeline/io/readers.py: every container and layout read into the same messages form.

Hermetic tests build their data in tmp_path. The round-trip tests read the real datasets
(tests/data/real, messages JSONL), write it back out in the layout it came from (alpaca, sharegpt) and in every
container, and assert reading gives exactly the messages again; nothing real is copied here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from sftpack.io.convert import ConvertConfig
from sftpack.io.convert import run as convert
from sftpack.errors import SftpackError
from sftpack.store.fingerprint import file_identity
from sftpack.io.layouts import convert_alpaca, parse_role_map
from sftpack.io.readers import ColumnMap, ReadOptions, open_input
from sftpack.validation.stage import ValidateConfig
from sftpack.validation.stage import run as validate
from sftpack.cli import main as cli
from tests.conftest import REPO

CALL = {"name": "get_weather", "arguments": {"city": "Oslo"}}
SHAREGPT = {
    "id": "s-1",
    "system": "Be brief.",
    "tools": json.dumps([{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}]),
    "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": "{\"temp\": 3}"},
        {"from": "gpt", "value": "3 degrees."},
    ],
}
SHAREGPT_AS_MESSAGES = {
    "id": "s-1",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "3 degrees."},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                "parameters": {"type": "object"}}}],
}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


def _records(source) -> list:
    return [row.record if row.error is None else row.error for batch in source.batches(7) for row in batch]


# ---------------------------------------------------------------- conversion rules

def test_sharegpt_rules(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [SHAREGPT])
    source = open_input(path)
    assert source.layout == "sharegpt" and not source.verbatim
    assert _records(source) == [SHAREGPT_AS_MESSAGES]


def test_sharegpt_call_lists_string_arguments_and_errors(tmp_path):
    calls = [{"name": "a", "arguments": "{\"x\": 1}"}, {"name": "b", "arguments": {}}]
    turns = [{"from": "user", "value": "go"}, {"from": "function_call", "value": json.dumps(calls)},
             {"from": "tool", "value": "1"}, {"from": "tool", "value": "2"}, {"from": "assistant", "value": "ok"}]
    bad = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
           {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{nope"}]},
           {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 5}]},
           {"conversations": [{"from": "human", "value": "hi"}], "tools": "[1]"}]
    pq.write_table(pa.Table.from_pylist([{"conversations": turns}]), tmp_path / "ok.parquet")
    (record,) = _records(open_input(tmp_path / "ok.parquet"))
    assert record["messages"][1]["tool_calls"] == [
        {"type": "function", "function": {"name": "a", "arguments": {"x": 1}}},
        {"type": "function", "function": {"name": "b", "arguments": {}}}]
    rows = [row for batch in open_input(_write_jsonl(tmp_path / "bad.jsonl", bad)).batches() for row in batch]
    assert [(r.where(), r.error.path, r.error.rule) for r in rows] == [
        ("bad.jsonl:1", "/conversations/1/from", "convert_role"),
        ("bad.jsonl:2", "/conversations/1/value", "convert_tool_call"),
        ("bad.jsonl:3", "/conversations/1/value", "convert_type"),
        ("bad.jsonl:4", "/tools/0", "convert_tools")]
    assert rows[0].error.message.startswith("conversations[1].from 'bot' is not one of human, user, gpt")


def test_alpaca_rules():
    record = {"instruction": "Translate.", "input": "Hallo", "output": "Hello", "system": "Be exact.",
              "history": [["Hi", "Hello!"]], "source": "alp"}
    converted, error = convert_alpaca(record, ColumnMap())
    assert error is None and converted == {"source": "alp", "messages": [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate.\nHallo"},  # LLaMA-Factory's single "\n"
        {"role": "assistant", "content": "Hello"}]}
    converted, _ = convert_alpaca({"instruction": "Name a color.", "input": "", "output": "Red"}, ColumnMap())
    assert converted["messages"][0] == {"role": "user", "content": "Name a color."}
    _, error = convert_alpaca({"instruction": "x", "output": "y", "history": [["only one"]]}, ColumnMap())
    assert (error.path, error.rule) == ("/history/0", "convert_type")
    _, error = convert_alpaca({"instruction": "x"}, ColumnMap())
    assert (error.path, error.rule) == ("/output", "convert_missing")


def test_column_map_and_role_map(tmp_path):
    rows = [{"dialog": [{"speaker": "customer", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}], "id": 3}]
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    columns = ColumnMap(messages="dialog", role="speaker", content="text",
                        roles=parse_role_map("user=customer, assistant=agent"))
    source = open_input(path, "messages", columns=columns)
    assert _records(source) == [{"id": 3, "messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello"}]}]
    assert source.identity()["columns"]["messages"] == "dialog"
    with pytest.raises(SftpackError, match="expected ROLE=NAME"):
        parse_role_map("user")
    with pytest.raises(SftpackError, match="'bot' is not one of"):
        parse_role_map("bot=x")


def test_undetectable_layout_names_keys_and_layouts(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"question": "a", "answer": "b"}]), tmp_path / "pc.parquet")
    with pytest.raises(SftpackError) as err:
        open_input(tmp_path / "pc.parquet")
    assert "first record's keys (answer, question)" in str(err.value)
    assert all(word in str(err.value) for word in ("messages", "sharegpt", "alpaca", "prompt_completion", "--format"))
    with pytest.raises(SftpackError, match="expected one of auto, messages"):
        open_input(tmp_path / "pc.parquet", format="openai")


def test_arrow_nulls_are_dropped(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "",
                          "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
                          {"role": "tool", "content": "1"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "id": "two"}]
    # Arrow gives the second row's turns a null tool_calls and the first row a null id.
    pq.write_table(pa.Table.from_pylist([rows[0] | {"id": None}, rows[1]]), tmp_path / "m.parquet")
    assert _records(open_input(tmp_path / "m.parquet")) == rows


# ---------------------------------------------------------------- containers

@pytest.mark.parametrize("name", ["x.jsonl.gz", "x.jsonl.zst", "x.parquet"])
def test_compressed_and_parquet_read_the_same(tmp_path, name):
    records = [dict(SHAREGPT, id=f"s-{i}") for i in range(20)]
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=6)
    else:
        _write_jsonl(path, records)
    source = open_input(path)
    assert [len(b) for b in source.batches(7)] == [7, 7, 6]
    assert _records(source) == [dict(SHAREGPT_AS_MESSAGES, id=f"s-{i}") for i in range(20)]
    identity = source.identity()
    assert identity["sha256"] == file_identity(path)["sha256"] and identity["bytes"] == path.stat().st_size
    assert identity.get("rows", identity.get("lines")) == 20 and source.stem == "x"


def test_plain_jsonl_identity_matches_file_identity(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    source = open_input(path)
    assert source.verbatim
    assert {k: v for k, v in source.identity().items() if k in ("path", "sha256", "bytes", "lines")} == \
        file_identity(path)


def test_folder_glob_and_save_to_disk(tmp_path):
    import datasets

    records = [dict(SHAREGPT, id=f"s-{i}") for i in range(5)]
    expected = [dict(SHAREGPT_AS_MESSAGES, id=f"s-{i}") for i in range(5)]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(records[:2]), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(records[2:]), tmp_path / "pq" / "b.parquet")
    folder = open_input(tmp_path / "pq")
    assert _records(folder) == expected and folder.container == "folder" and folder.identity()["rows"] == 5
    assert [r.where() for b in folder.batches() for r in b][2] == "b.parquet:1"
    assert _records(open_input(str(tmp_path / "pq" / "*.parquet"))) == expected

    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:3]),
                          "test": datasets.Dataset.from_list(records[3:])}).save_to_disk(tmp_path / "dd")
    assert _records(open_input(tmp_path / "dd")) == expected[:3]
    assert _records(open_input(tmp_path / "dd", split="test")) == expected[3:]
    with pytest.raises(SftpackError, match="no split 'dev'"):
        open_input(tmp_path / "dd", split="dev")


_READ_DATASET_NAME = """
import json, sys
from sftpack.io.readers import open_input
out = {}
for split in ("train", "validation"):
    source = open_input("someuser/tiny_chat", split=split)
    out[split] = {"records": [r.record if r.error is None else str(r.error) for b in source.batches(7) for r in b],
                  "stem": source.stem, "rows": source.identity()["rows"], "container": source.container,
                  "dataset": type(source.dataset).__name__}
json.dump(out, sys.stdout)
"""


def test_dataset_name_loads_offline_from_the_local_cache(tmp_path, monkeypatch):
    """A dataset name reads, offline, what an earlier online load_dataset left in the datasets cache.

    With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, datasets 5.2.0 never looks at the hub cache
    (datasets--org--name/snapshots/...): load_dataset raises OfflineModeIsEnabled before any hub
    call and falls back to CachedDatasetModuleFactory, which reads the prepared Arrow cache
    HF_DATASETS_CACHE/org___name/<config>/<version>/<hash>/ (dataset_info.json, name-<split>.arrow).
    That cache is written here by datasets' own Parquet builder (the one an online load of a Parquet
    repo runs), then put where an online load of "someuser/tiny_chat" leaves it. The env vars are read
    into constants when datasets is imported, so the load runs in a fresh interpreter.
    """
    from datasets.packaged_modules.parquet.parquet import Parquet

    records = [dict(SHAREGPT, id=f"s-{i}") for i in range(5)]
    expected = [dict(SHAREGPT_AS_MESSAGES, id=f"s-{i}") for i in range(5)]
    pq.write_table(pa.Table.from_pylist(records[:3]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(records[3:]), tmp_path / "validation.parquet")
    builder = Parquet(cache_dir=str(tmp_path / "staging"), dataset_name="tiny_chat",
                      data_files={split: str(tmp_path / f"{split}.parquet") for split in ("train", "validation")})
    builder.download_and_prepare()
    hf = tmp_path / "hf"
    cached = hf / "datasets" / "someuser___tiny_chat" / "default" / "0.0.0" / ("3f" * 20)
    cached.mkdir(parents=True)
    for name in ("dataset_info.json", "tiny_chat-train.arrow", "tiny_chat-validation.arrow"):
        (cached / name).write_bytes((Path(builder.cache_dir) / name).read_bytes())

    for name, value in {"HF_HOME": hf, "HF_HUB_CACHE": hf / "hub", "HF_DATASETS_CACHE": hf / "datasets",
                        "HF_HUB_OFFLINE": 1, "HF_DATASETS_OFFLINE": 1}.items():
        monkeypatch.setenv(name, str(value))
    proc = subprocess.run([sys.executable, "-c", _READ_DATASET_NAME], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["train"] == {"records": expected[:3], "stem": "tiny_chat-train", "rows": 3, "container": "dataset",
                            "dataset": "IterableDataset"}  # streamed: the cache allows it
    assert got["validation"]["records"] == expected[3:] and got["validation"]["stem"] == "tiny_chat-validation"


def test_missing_inputs(tmp_path, monkeypatch):
    with pytest.raises(SftpackError, match="missing.jsonl: input file not found"):
        open_input(tmp_path / "missing.jsonl")
    with pytest.raises(SftpackError, match="is a folder with neither"):
        open_input(tmp_path)
    with pytest.raises(SftpackError, match="no files match"):
        open_input(str(tmp_path / "*.parquet"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SftpackError, match="found nothing in the local cache"):
        open_input("nobody/no-such-dataset")


# ---------------------------------------------------------------- validate and convert-data

def test_validate_parquet_sharegpt_writes_provenance_and_names_rejects(tmp_path, capsys):
    good = dict(SHAREGPT)
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]}
    ends_with_user = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                                        {"from": "human", "value": "and?"}]}
    pq.write_table(pa.Table.from_pylist([good, bad, ends_with_user]), tmp_path / "data.parquet")
    out = tmp_path / "out"
    assert cli(["validate", str(tmp_path / "data.parquet"), "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "data.parquet:2: /conversations/1/from [convert_role] conversations[1].from 'bot'" in err
    assert "data.parquet:3: /messages/2/role [role_order]" in err
    (kept,) = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert kept == SHAREGPT_AS_MESSAGES | {"input": "data.parquet", "row": 1}
    rejects = [json.loads(line) for line in (out / "data.rejects.jsonl").read_text().splitlines()]
    assert [(r["input"], r["row"], r["errors"][0]["rule"]) for r in rejects] == [
        ("data.parquet", 2, "convert_role"), ("data.parquet", 3, "role_order")]
    assert rejects[0]["record"] == bad
    manifest = json.loads((out / "data.validate.json").read_text())
    assert manifest["input"]["layout"] == "sharegpt" and manifest["input"]["rows"] == 3
    assert manifest["counts"] == {"read": 3, "kept": 1, "rejected": 2, "blank": 0, "rejected_convert_role": 1,
                                  "rejected_role_order": 1}


def test_validate_cli_format_and_config(tmp_path, model_dir):
    rows = [{"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    path = _write_jsonl(tmp_path / "odd.jsonl", rows)
    assert cli(["validate", str(path), "--out-dir", str(tmp_path / "a")]) == 0  # sharegpt turns under `messages`
    assert cli(["validate", str(path), "--out-dir", str(tmp_path / "b"), "--format", "messages"]) == 1
    assert cli(["validate", str(path), "--out-dir", str(tmp_path / "c"), "--format", "messages", "--role-key",
                "from", "--content-key", "value", "--role-map", "user=human,assistant=gpt"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  format: messages\n")
    assert cli(["validate", str(path), "--out-dir", str(tmp_path / "d"), "--config", str(config),
                "--allow-rejects"]) == 0
    assert json.loads((tmp_path / "d" / "odd.validate.json").read_text())["counts"]["rejected"] == 1


def test_convert_data(tmp_path, capsys):
    bad = {"conversations": [{"from": "bot", "value": "x"}]}
    path = _write_jsonl(tmp_path / "in.jsonl.zst", [SHAREGPT, bad])
    out = tmp_path / "conv" / "out.jsonl"
    assert cli(["convert-data", str(path), "--out", str(out)]) == 1
    assert "in.jsonl.zst:2: /conversations/0/from [convert_role]" in capsys.readouterr().err
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        SHAREGPT_AS_MESSAGES | {"input": "in.jsonl.zst", "row": 1}]
    manifest = json.loads((tmp_path / "conv" / "out.convert.json").read_text())
    assert manifest["counts"] == {"read": 2, "converted": 1, "rejected": 1, "blank": 0, "rejected_convert_role": 1}
    assert (tmp_path / "conv" / "out.convert-rejects.jsonl").read_text().count("\n") == 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".incomplete-")]
    result = convert(path, out, ConvertConfig(read=ReadOptions(format="sharegpt"), allow_rejects=True))
    assert result["input"]["layout"] == "sharegpt"
    with pytest.raises(SftpackError, match="is the input itself"):
        convert(out, out, ConvertConfig())


# ---------------------------------------------------------------- the real datasets, round trip

def _as_alpaca(record: dict) -> dict:
    messages = record["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    # Split the prompt at its first newline when both parts are non-empty: joining them with "\n"
    # must give the prompt back, which exercises the instruction/input rule.
    instruction, _, rest = turns[-2]["content"].partition("\n")
    instruction, query = (instruction, rest) if instruction and rest else (turns[-2]["content"], "")
    alpaca = {"id": record["id"], "source": record["source"], "instruction": instruction, "input": query,
              "output": turns[-1]["content"], "history": pairs}
    return alpaca | ({"system": system} if system is not None else {})


def _as_sharegpt(record: dict) -> dict:
    names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    turns = []
    for m in record["messages"]:
        if m.get("tool_calls"):
            calls = [c["function"] for c in m["tool_calls"]]
            turns.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls)})
        else:
            turns.append({"from": names[m["role"]], "value": m["content"]})
    tools = json.dumps([t["function"] for t in record["tools"]]) if record.get("tools") else ""
    return {"id": record["id"], "source": record["source"], "conversations": turns, "tools": tools}


def _write_container(records: list[dict], folder: Path, container: str) -> Path:
    import datasets

    if container == "parquet":
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=128)
    elif container == "save_to_disk":
        path = folder / "saved"
        datasets.Dataset.from_list(records).save_to_disk(path, max_shard_size="200KB")
    else:
        path = _write_jsonl(folder / f"data.{container}", records)
    return path


@pytest.mark.parametrize("dataset,to_layout", [("alpaca_en_demo", _as_alpaca),
                                               ("fastchat_dummy_conversation", _as_sharegpt),
                                               ("glaive_toolcall_en_demo", _as_sharegpt)])
def test_real_data_round_trip_in_every_container(tmp_path, real_data, dataset, to_layout):
    original = real_data / f"{dataset}.jsonl"
    expected = [json.loads(line) for line in original.read_text(encoding="utf-8").splitlines()]
    layout = "alpaca" if to_layout is _as_alpaca else "sharegpt"
    converted = [to_layout(r) for r in expected]
    baseline = validate([original], tmp_path / "baseline", ValidateConfig())["totals"]
    for container in ("parquet", "jsonl.gz", "jsonl.zst", "save_to_disk"):
        folder = tmp_path / container
        folder.mkdir()
        source = open_input(_write_container(converted, folder, container))
        assert source.layout == layout, container
        # The one difference: `"tools": []` reads back as no tools (an empty tools column means none).
        assert _records(source) == [{k: v for k, v in r.items() if v != []} for r in expected], container
        totals = validate([source.spec], folder / "validated", ValidateConfig())["totals"]
        assert totals["kept"] == baseline["kept"] and totals["read"] == len(expected), container
