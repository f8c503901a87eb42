"""Foundation: the converted default model, the run-config schema, the demo data generator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sftpack.config.run_config import build_config, load_config
from sftpack.errors import SftpackError
from sftpack.default_model import convert, gguf_path
from tests.conftest import REPO


# ---------------------------------------------------------------- the default model

@pytest.fixture(scope="module")
def gguf_tensors() -> dict:
    """The shipped GGUF's tensors by name (reading its index takes seconds: once)."""
    import gguf

    return {t.name: t for t in gguf.GGUFReader(gguf_path()).tensors}


@pytest.mark.parametrize("gguf_name, hf_name", [
    ("token_embd.weight", "model.embed_tokens.weight"),          # Q8_0
    ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # Q4_1
    ("blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"),
    ("output_norm.weight", "model.norm.weight"),                  # F32
])
def test_converted_weights_equal_gguf_dequantized(model_dir, gguf_tensors, gguf_name, hf_name):
    import gguf
    from safetensors import safe_open

    tensor = gguf_tensors[gguf_name]
    expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    with safe_open(model_dir / "model.safetensors", "np") as weights:
        actual = weights.get_tensor(hf_name)
    np.testing.assert_array_equal(actual, expected.reshape(actual.shape))


def test_converted_folder_is_complete_and_reused(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (model_dir / "chat_template.jinja").read_text().startswith("{% for message in messages %}")
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    assert convert(model_dir)["reused"] is True  # idempotent: same GGUF, nothing rewritten


def test_converted_model_knows_paris(model_dir, smol_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = smol_tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


# ---------------------------------------------------------------- run config

def test_demo_config_loads_with_overrides():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.max_steps=20", "data.max_length=256"])
    assert cfg.train["max_steps"] == 20 and cfg.data.max_length == 256
    assert cfg.model.dtype == "auto" and cfg.data.packing is True
    assert cfg.train["lr_scheduler_type"] == "cosine"
    assert build_config(cfg.to_dict()).to_dict() == cfg.to_dict()  # resolved config round-trips


@pytest.mark.parametrize("overrides, expected", [
    (["data.maxlength=3"], "data.maxlength: unknown key; valid keys here: "),
    (["data.maxlength=3"], ", max_length, "),
    (["data.maxlength=3"], "Did you mean max_length?"),
    (["train.learnin_rate=0.1"], "train.learnin_rate: not a TRL SFTConfig field. Did you mean learning_rate?"),
    (["train.num_train_epochs=three"], "train.num_train_epochs: 'three' is not of type"),
    (["train.max_length=128"], "train.max_length: conflicts with data.max_length"),
    (["model.dtype=float32", "train.bf16=true"], "train.bf16 True conflicts with model.dtype float32"),
    (["model.dtype=float16"], "model.dtype: 'float16' is not one of"),
    (["extra.key=1"], "extra: unknown key; valid keys here: data, model, monitor, peft, train"),
])
def test_bad_config_names_the_key(overrides, expected):
    with pytest.raises(SftpackError) as err:
        load_config(REPO / "configs" / "demo.yaml", overrides)
    assert expected in str(err.value)


def test_all_config_errors_are_reported_at_once(tmp_path):
    with pytest.raises(SftpackError) as err:
        load_config(REPO / "configs" / "demo.yaml", ["data.maxlength=3", "train.lr=1"])
    assert "data.maxlength" in str(err.value) and "train.lr" in str(err.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  name_or_path: x\n data: [\n")
    with pytest.raises(SftpackError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(broken)
    with pytest.raises(SftpackError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- demo data

def _generate(out_dir):
    subprocess.run([sys.executable, str(REPO / "data" / "generate_demo.py"), "--out-dir", str(out_dir)],
                   check=True, capture_output=True)
    return [(out_dir / f"{split}.jsonl").read_bytes() for split in ("train", "val")]


def test_demo_generator_is_seeded_and_valid(tmp_path):
    from sftpack.validation.stage import ValidateConfig, run as validate

    first, second = _generate(tmp_path / "a"), _generate(tmp_path / "b")
    assert first == second
    train = [json.loads(line) for line in first[0].splitlines()]
    val = [json.loads(line) for line in first[1].splitlines()]
    assert len(train) == 800 and len(val) == 24
    assert any(m["role"] == "system" for r in train for m in r["messages"])
    assert any(len(r["messages"]) > 3 for r in train) and any(len(r["messages"]) == 2 for r in train)
    train_prompts = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    val_prompts = {m["content"] for r in val for m in r["messages"] if m["role"] == "user"}
    assert not train_prompts & val_prompts  # held out
    result = validate([tmp_path / "a" / "train.jsonl", tmp_path / "a" / "val.jsonl"], tmp_path / "v",
                      ValidateConfig(tokenizer=str(REPO / "models" / "smollm2-135m-instruct")))
    assert result["totals"] == {"read": 824, "kept": 824, "rejected": 0, "blank": 0}


def test_yaml_yes_no_stay_strings_so_trl_values_survive(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl}\ntrain: {eval_strategy: no, bf16: false}\n")
    cfg = load_config(config, ["train.save_strategy=no", "data.packing=true"])
    assert cfg.train == {"eval_strategy": "no", "bf16": False, "save_strategy": "no"}
    assert cfg.data.packing is True


def test_data_option_choices_are_defined_once():
    """The config schema lists the same choices and minimum as pipeline/config/data_options.py."""
    from sftpack.config.data_options import CHOICES, DEFAULT_MAX_LENGTH, MIN_MAX_LENGTH
    from sftpack.config.run_config import DataConfig

    schema = json.loads((REPO / "schemas" / "run_config.schema.json").read_text())["properties"]["data"]["properties"]
    for key in ("train_on", "turns", "reasoning", "truncation"):
        assert tuple(schema[key]["enum"]) == CHOICES[key], key
    assert schema["max_length"]["minimum"] == MIN_MAX_LENGTH
    assert DataConfig().max_length == DEFAULT_MAX_LENGTH
