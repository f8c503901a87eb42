"""Shared fixtures: the real SmolLM2 tokenizer, a tiny model made from config, data paths.

Everything is local: `make test` converts the embedded model first, and the hub is off.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data" / "real"
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"


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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} missing: the real datasets live in ../shared/data/real/")
    return SHARED_DATA


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

def pack_for_tests(tokenizer, conversations: list[dict], max_length: int, out: Path) -> Path:
    """A packed folder in the pack stage's contract, made simply (train tests must not depend
    on pack): render with the chat template, train on assistant turns only (each turn's span
    is the difference between the prompt-with-generation-prompt and the prompt-with-answer),
    fill rows in order up to max_length, save with `save_to_disk`, write manifest.json."""
    import json

    from datasets import Dataset, Features, List, Value

    from pipeline.fingerprint import tokenizer_identity

    encoded = []
    for conv in conversations:
        messages = conv["messages"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        labels = [-100] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
            end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=False))
            labels[start:end] = ids[start:end]
        if len(ids) <= max_length:
            encoded.append((conv["id"], ids, labels))
    rows = {"input_ids": [], "labels": [], "seq_lengths": [], "example_ids": []}
    for example_id, ids, labels in encoded:
        if not rows["input_ids"] or len(rows["input_ids"][-1]) + len(ids) > max_length:
            for column in rows.values():
                column.append([])
        rows["input_ids"][-1] += ids
        rows["labels"][-1] += labels
        rows["seq_lengths"][-1].append(len(ids))
        rows["example_ids"][-1].append(example_id)
    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")),
                         "seq_lengths": List(Value("int32")), "example_ids": List(Value("string"))})
    Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    tokens = sum(len(r) for r in rows["input_ids"])
    trained = sum(sum(1 for x in r if x != -100) for r in rows["labels"])
    manifest = {
        "fingerprint": f"test-{out.name}",
        "options": {"max_length": max_length},
        "tokenizer": tokenizer_identity(tokenizer, None),
        "totals": {"rows": len(rows["input_ids"]), "tokens": tokens, "trained_tokens": trained},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def packed_chat(shared_data, smol_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """(train, validation) packed folders from the real fastchat conversations: 120 + 12
    conversations, rows of at most 256 tokens (small: TRL's fused loss is slow on CPU)."""
    import json

    lines = (shared_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line) for line in lines[:132]]
    root = tmp_path_factory.mktemp("packed-chat")
    train = pack_for_tests(smol_tokenizer, conversations[:120], 256, root / "train")
    val = pack_for_tests(smol_tokenizer, conversations[120:], 256, root / "val")
    return train, val
