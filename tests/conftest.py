"""Shared fixtures: the real SmolLM2 tokenizer, a tiny model made from config, data paths.

Everything is local: `make test` converts the embedded model first, and the hub is off.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Two xdist workers already fill both cores: a second torch thread per process only spins and waits
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
REAL_DATA = REPO / "tests" / "data" / "real"  # gzipped copies of the real datasets (NOTICE there)
REAL_NAMES = ("alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo")
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
REAL_TEMPLATES = FIXTURES / "templates" / "real"
MODELS = __import__("json").loads((REAL_TEMPLATES / "models.json").read_text(encoding="utf-8"))
"""Per real template (file stem): its model's special and stop tokens (templates/real/README.md)."""


def chat_and_alpaca_recipe(folder: Path, per_source: int, eval_count: int) -> Path:
    """A 2-source recipe in `folder`: `per_source` short real records each of fastchat (chat) and
    alpaca (alpaca), `eval_count` of each held out as eval/<source>, seed 3."""
    import json

    import yaml

    sources = []
    for name, real in (("chat", "fastchat_dummy_conversation"), ("alpaca", "alpaca_en_demo")):
        records = [r for r in read_real(real) if len(json.dumps(r)) < 900][:per_source]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        sources.append({"name": name, "path": str(folder / f"{name}.jsonl")})
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, "eval": {"count": eval_count}, "seed": 3}))
    return path


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Restore `--dist loadgroup`'s grouping under pytest 9: pytest-xdist 3.8 tags a grouped test by
    assigning `item._nodeid += "@<group>"`, which pytest 9 no longer reads (a node's id lives in
    `item._id`), so every xdist_group mark was ignored and each worker built the shared session
    fixtures of a group again (test_fsdp's three launches ran twice, on both workers at once).
    The same tag, set where pytest 9 keeps the id; a no-op wherever xdist's own tag took effect."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        tag = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(tag):
            item._id = NodeId.parse(item.nodeid + tag)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The converted default model (written by `make model`)."""
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(f"{MODEL_DIR} missing: run `make model` (make test does it first)")
    return MODEL_DIR


@pytest.fixture(scope="session")
def smol_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def read_real(name: str) -> list[dict]:
    """The records of one real dataset (tests/data/real/<name>.jsonl.gz)."""
    import gzip
    import json

    with gzip.open(REAL_DATA / f"{name}.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """A folder holding the real datasets as plain `<name>.jsonl` files, as users have them."""
    import gzip

    folder = tmp_path_factory.mktemp("real-data")
    for name in REAL_NAMES:
        (folder / f"{name}.jsonl").write_bytes(gzip.decompress((REAL_DATA / f"{name}.jsonl.gz").read_bytes()))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, model_dir, smol_tokenizer) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer, random weights (seeded), saved as a folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- packed folders for train/sanity tests

def pack_lines(lines: list[str], model_dir: Path, max_length: int, root: Path, name: str) -> Path:
    """Pack messages JSONL lines with the real pack stage; return the packed folder."""
    from sftpack.packing.stage import PackConfig, run

    source = root / f"{name}.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(run([source], root / "packed", PackConfig(tokenizer=str(model_dir), max_length=max_length))["path"])


@pytest.fixture(scope="session")
def packed_chat(real_data, model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(train, validation) packed folders from the real fastchat conversations: 120 + 12
    conversations, rows of at most 256 tokens (small: TRL's fused loss is slow on CPU)."""
    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
    root = tmp_path_factory.mktemp("packed-chat")
    return pack_lines(lines[:120], model_dir, 256, root, "train"), pack_lines(lines[120:132], model_dir, 256, root, "val")


@functools.lru_cache
def transformers_tokenizer(folder: str):
    """transformers' own tokenizer of a folder: what renders and tokens are held to (a stand-in's
    tokenizer is sftpack's RustTokenizer, pipeline/templates/rust_tokenizer.py)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory):
    """get(name, generation_config=True, **ChatRenderer options) -> (tokenizer, ChatRenderer): a
    real template (tests/fixtures/templates/real/<name>.jinja) on SmolLM2's tokenizer with the
    model's control tokens added, saved to a folder with a generation_config.json naming its stop
    tokens (or, with generation_config=False, the same folder without it). Built once per session."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from sftpack.templates.chat_template import ChatRenderer
    from sftpack.templates.tokenizer import load_tokenizer

    built = {}

    def get(name: str, generation_config: bool = True, **renderer_options):
        key = (name, generation_config, json.dumps(renderer_options, sort_keys=True))
        if key not in built:
            folder = tmp_path_factory.mktemp(name)
            if (name, True, "{}") in built:  # the same folder, without generation_config.json
                shutil.copytree(built[name, True, "{}"][0].name_or_path, folder, dirs_exist_ok=True)
            else:
                tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)  # transformers': it adds tokens
                model = MODELS[name]
                tokenizer.add_special_tokens({k: v for k, v in model["special_tokens"].items() if v})
                tokenizer.add_tokens([t for t in model["stop_tokens"] if t not in tokenizer.get_vocab()],
                                     special_tokens=True)
                tokenizer.save_pretrained(folder)
                (folder / "generation_config.json").write_text(json.dumps(
                    {"eos_token_id": [tokenizer.convert_tokens_to_ids(t) for t in model["stop_tokens"]]}))
            if not generation_config:
                (folder / "generation_config.json").unlink(missing_ok=True)
            tokenizer = load_tokenizer(folder)
            template = (REAL_TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
            built[key] = (tokenizer, ChatRenderer(tokenizer, template, **renderer_options))
        return built[key]

    return get


def near_duplicate_sources(folder: Path) -> tuple[list[Path], Path]:
    """Two sources whose near-duplicate decisions depend on order, and a benchmark of 7 answers' openings.

    Real alpaca answers each get a chain of three edits (2, 4 or 8 inserted words a link, split over
    both sources): a link is near the one before it, and later links may be far from the first, so
    a record can be kept after a removed record it is near to. Every fifth answer also comes upper-cased
    (the same words, another conversation) and every seventh as an exact copy; four tool calls come
    again with their keys in reverse order (one conversation, text far apart).
    """
    import json
    import random

    rng = random.Random(0)

    def edited(record: dict, steps: int) -> dict:
        out = json.loads(json.dumps(record))
        answer = out["messages"][-1]
        tokens = answer["content"].split()
        for _ in range(steps):
            tokens.insert(rng.randrange(len(tokens)), rng.choice(("really", "also", "then", "kindly", "indeed")))
        answer["content"] = " ".join(tokens)
        return out

    records = [r for r in read_real("alpaca_en_demo")
               if len(" ".join(m["content"] for m in r["messages"]).split()) > 60][:120]
    first, second = [], []
    for k, record in enumerate(records):
        first.append(record)
        link = record
        for step in range(3):
            link = edited(link, rng.choice((2, 4, 8)))
            (first if (k + step) % 2 else second).append(link)
        if k % 5 == 0:
            upper = json.loads(json.dumps(record))
            upper["messages"][-1]["content"] = upper["messages"][-1]["content"].upper()
            second.append(upper)
        if k % 7 == 0:
            second.append(record)
    for k in range(4):  # the same tool call with its argument keys in reverse order: one conversation, other text
        arguments = {f"field{j}": f"value{k}x{j}" for j in range(12)}
        calls = [{"type": "function", "function": {"name": "plan_trip", "arguments": arguments}}]
        turns = [{"role": "user", "content": f"Plan trip {k}"}, {"role": "assistant", "content": "", "tool_calls": calls},
                 {"role": "tool", "content": "ok"}, {"role": "assistant", "content": f"Done {k}"}]
        first.append({"messages": turns})
        reversed_calls = [{"function": {"arguments": dict(reversed(arguments.items())), "name": "plan_trip"},
                           "type": "function"}]
        second.append({"messages": turns[:1] + [turns[1] | {"tool_calls": reversed_calls}] + turns[2:]})
    rng.shuffle(second)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("first", first), ("second", second)):
        paths.append(folder / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bench = folder / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": " ".join(r["messages"][-1]["content"].split()[:20])}) + "\n"
                             for r in records[3:40:6]), encoding="utf-8")
    return paths, bench


def wandb_history(run_dir: Path) -> dict[str, list]:
    """Every logged key's values, in order, from the offline W&B run file beside a run: wandb's own Record
    protobufs in its record log (LevelDB-log framing: 32 KiB blocks, 7-byte record headers)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    history: dict[str, list] = {}
    pos, parts, block = 7, [], 32768
    while pos + 7 <= len(raw):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer: skip to the next block
            pos += left
            continue
        parts.append(raw[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return history


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_train(accelerate_config: str, config: Path):
    """Start `accelerate launch -m sftpack train` on configs/accelerate/<accelerate_config>'s ranks
    (2 CPU processes), on a rendezvous port of its own: launches on two xdist workers may overlap."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
         str(REPO / "configs" / "accelerate" / accelerate_config), "--main_process_port", str(_free_port()),
         "-m", "sftpack", "train", "--config", str(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_launch(proc, timeout: int = 300) -> tuple[str, str]:
    """Wait for a launch_train process; its (stdout, stderr), asserting it exited 0."""
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr
