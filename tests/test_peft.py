"""Adapters: the `peft` section checked against PEFT's LoraConfig, real LoRA, DoRA and 4-bit QLoRA runs
on a tiny Llama (checkpoints, resume, sanity, checkpointing, new tokens), the export that merges
them, and the memory estimate `plan` prints (its adapter count against PEFT's own). 2-process DDP
with an adapter: tests/test_families.py (one launch, also unpacked)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REAL_TEMPLATES

from sftpack.config.run_config import apply_overrides, build_config, parse_yaml
from sftpack.errors import SftpackError
from sftpack.exporting.stage import EXPORT_MANIFEST
from sftpack.exporting.stage import run as export
from sftpack.training.stage import FINAL_DIR, RUN_MANIFEST, run as train

REPO = Path(__file__).resolve().parent.parent
LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def lora_config(model_dir, packed, out, peft=None, validation=True, **train_values):
    """4 steps of one packed row, eval and save every 2; the adapter rate is 10x test_train's."""
    settings = {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 1,
                "per_device_eval_batch_size": 8, "learning_rate": 2e-2, "logging_steps": 1,
                "eval_strategy": "steps" if validation else "no", "eval_steps": 2, "save_strategy": "steps",
                "save_steps": 2, "report_to": "none", "seed": 7, "data_seed": 7, "disable_tqdm": True}
    settings.update(train_values)
    data = {"train": str(packed[0]), "validation": str(packed[1]) if validation else None, "max_length": 256}
    raw = {"model": {"name_or_path": str(model_dir)}, "data": data, "train": settings,
           "peft": {"r": 4, "lora_alpha": 8} if peft is None else peft}
    return build_config(raw)


ON_LORA_RUN_WORKER = pytest.mark.xdist_group("lora-run")  # its users on one worker: the run trains once


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir, packed_chat, tmp_path_factory):
    """One LoRA run shared by the tests below: (run folder, manifest)."""
    out = tmp_path_factory.mktemp("lora") / "run"
    manifest = train(lora_config(tiny_model_dir, packed_chat, out))
    return out, manifest


# ---------------------------------------------------------------- the config

def test_peft_keys_are_lora_config_names(tiny_model_dir, packed_chat, tmp_path):
    cfg = lora_config(tiny_model_dir, packed_chat, tmp_path, peft={"r": 8, "use_dora": True, "lora_dropout": 0.1})
    assert cfg.peft == {"r": 8, "use_dora": True, "lora_dropout": 0.1} and cfg.to_dict()["peft"] == cfg.peft
    raw = lora_config(tiny_model_dir, packed_chat, tmp_path).to_dict()
    raw["peft"] = {"lora_alhpa": 8, "task_type": "SEQ_CLS", "r": "big"}
    raw["model"]["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant": "nf4"}
    with pytest.raises(SftpackError) as err:
        build_config(raw)
    message = str(err.value)
    assert "peft.lora_alhpa: not a PEFT LoraConfig field. Did you mean lora_alpha" in message
    assert "Valid keys: alora_invocation_tokens," in message and " target_modules," in message
    assert "peft.task_type: set by sftpack" in message and "peft.r: 'big' is not of type int" in message
    assert "model.quantization.bnb_4bit_quant: not a transformers BitsAndBytesConfig field. Did you mean " \
           "bnb_4bit_quant_type" in message
    raw["peft"] = {"r": 0}  # LoraConfig takes it; PEFT refuses only when the model is wrapped, after data work
    with pytest.raises(SftpackError, match="peft.r: 0 is not a rank; the adapter's rank is a positive integer"):
        build_config(raw)
    del raw["peft"]
    raw["model"]["quantization"] = {"load_in_4bit": True}
    with pytest.raises(SftpackError, match="model.quantization needs a peft section"):
        build_config(raw)
    full = build_config({k: v for k, v in raw.items() if k != "peft"} | {"model": {"name_or_path": "m"}})
    assert full.peft is None and "peft" not in full.to_dict()  # no section: full fine-tuning


def test_overrides_read_numbers_as_written():
    raw = apply_overrides({"model": {"name_or_path": "m"}, "data": {}, "train": {"output_dir": "o"}},
                          ["train.learning_rate=5e-4", "train.weight_decay=1e-5", "train.adam_epsilon=2E-5",
                           "peft.r=8", "peft.lora_dropout=5e-2", "train.run_name=1e3x"])
    assert raw["train"]["learning_rate"] == 5e-4 and raw["train"]["adam_epsilon"] == 2e-5
    assert raw["train"]["weight_decay"] == 1e-5 and raw["peft"] == {"r": 8, "lora_dropout": 0.05}
    assert raw["train"]["run_name"] == "1e3x"
    assert build_config(raw).train["learning_rate"] == 5e-4  # a float, so SFTConfig's type check passes
    assert parse_yaml("lr: 1e-4\nsteps: 10\nname: e5") == {"lr": 1e-4, "steps": 10, "name": "e5"}


# ---------------------------------------------------------------- a LoRA run

@ON_LORA_RUN_WORKER
def test_lora_run_saves_the_adapter_and_counts_parameters(lora_run, tiny_model_dir):
    out, manifest = lora_run
    final = out / FINAL_DIR
    assert manifest["status"] == "completed" and manifest["steps"] == 4
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "model.safetensors").exists()
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == LINEAR  # all-linear by default
    assert adapter["r"] == 4
    weights = load_file(final / "adapter_model.safetensors")
    assert weights and all("lora_A" in key or "lora_B" in key for key in weights)
    # r x (in + out) per linear map, per layer: q, o 64x64; k, v 64->32; gate, up 64->128; down 128->64
    per_layer = 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    assert manifest["trainable_parameters"] == 2 * per_layer
    assert manifest["total_parameters"] == base + 2 * per_layer
    # eval ran on the adapter, the monitors logged, checkpoints hold adapters
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [2, 4]
    assert manifest["tokens"]["trained"] > 0  # the trainer's own token counting saw the adapter's batches
    assert isinstance(manifest["health_warnings"], list)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at zero: it trained


@ON_LORA_RUN_WORKER
def test_resume_from_an_adapter_checkpoint_ends_at_the_same_adapter(lora_run, tiny_model_dir, packed_chat,
                                                                    tmp_path):
    out, _ = lora_run
    resumed = tmp_path / "run"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    manifest = train(lora_config(tiny_model_dir, packed_chat, resumed, resume_from_checkpoint=True))
    assert manifest["resumed_from"].endswith("checkpoint-2") and manifest["steps"] == 4
    first = load_file(out / FINAL_DIR / "adapter_model.safetensors")
    second = load_file(resumed / FINAL_DIR / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=1e-5, rtol=1e-4)


def test_eval_per_source_with_an_adapter(tiny_model_dir, packed_chat, tmp_path):
    from sftpack.training.trainer import build_trainer

    session = build_trainer(lora_config(tiny_model_dir, packed_chat, tmp_path))
    eval_ds = session.trainer.eval_dataset
    metrics = session.trainer.evaluate({"chat": eval_ds, "again": eval_ds.select(range(1))})
    assert {"eval_chat_loss", "eval_again_loss", "eval_loss"} <= set(metrics)
    assert type(session.trainer.model).__name__ == "PeftModelForCausalLM"


def test_dora_with_activation_checkpointing_trains(tiny_model_dir, packed_chat, tmp_path):
    cfg = lora_config(tiny_model_dir, packed_chat, tmp_path, peft={"r": 4, "use_dora": True}, validation=False,
                      max_steps=2, save_strategy="no", gradient_checkpointing=True)
    manifest = train(cfg)
    assert manifest["status"] == "completed"
    adapter = json.loads((tmp_path / FINAL_DIR / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    weights = load_file(tmp_path / FINAL_DIR / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in key for key in weights)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # gradients reached the adapter


def test_sanity_with_an_adapter_passes(tiny_model_dir, packed_chat, tmp_path):
    from sftpack.training.sanity import SanityConfig
    from sftpack.training.sanity import run as sanity

    # A random-init tiny model near the uniform loss learns nothing in 6 steps through low-rank
    # updates alone (0.3% at lr 0.3): its head trains beside the adapter (modules_to_save).
    report = sanity(lora_config(tiny_model_dir, packed_chat, tmp_path, peft={"r": 8, "lora_alpha": 32,
                                                                              "modules_to_save": ["lm_head"]},
                                validation=False, learning_rate=3e-2),
                    SanityConfig(steps=6, examples=16, samples=1, max_new_tokens=4, out_dir=str(tmp_path / "s")))
    assert report["passed"], report["reason"]


# ---------------------------------------------------------------- tokens the base vocabulary lacks

@pytest.fixture(scope="session")
def gemma_model(stand_in, tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's weights beside SmolLM2's tokenizer with Gemma 2's control tokens added
    (<start_of_turn>, <end_of_turn>, ...): the tokenizer has ids the embeddings have no row for."""
    tokenizer, _ = stand_in("gemma2")
    folder = tmp_path_factory.mktemp("gemma-tiny")
    shutil.copytree(tokenizer.name_or_path, folder, dirs_exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tiny_model_dir / name, folder / name)
    return folder


def test_new_chat_tokens_train_with_the_adapter_and_export(gemma_model, real_data, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(gemma_model)
    rows = AutoModelForCausalLM.from_pretrained(gemma_model).get_input_embeddings().weight.shape[0]
    new_ids = list(range(rows, len(tokenizer)))
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert new_ids and end_of_turn in new_ids
    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text().splitlines()[:40]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(lines) + "\n")
    raw = lora_config(gemma_model, (data, None), tmp_path / "run", validation=False, max_steps=3,
                      save_strategy="no").to_dict()
    raw["data"] |= {"chat_template": str(REAL_TEMPLATES / "gemma2.jinja"), "out_dir": str(tmp_path / "out")}
    manifest = train(build_config(raw))
    assert manifest["status"] == "completed"
    weights = load_file(tmp_path / "run" / FINAL_DIR / "adapter_model.safetensors")
    deltas = [w for k, w in weights.items() if k.endswith("trainable_tokens_delta")]
    assert deltas and all(d.shape[0] == len(new_ids) for d in deltas)  # exactly the new rows train
    grown = [w for k, w in weights.items() if k.endswith("embed_tokens.token_adapter.base_layer.weight")]
    assert grown[0].shape[0] == len(tokenizer)  # the grown embeddings travel with the adapter

    out = tmp_path / "export"
    result = export(tmp_path / "run", out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    generation = json.loads((out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])  # stops where it was trained to
    assert result["chat_template_from"] == "data.chat_template"
    assert AutoTokenizer.from_pretrained(out).chat_template == (REAL_TEMPLATES / "gemma2.jinja").read_text()


# ---------------------------------------------------------------- QLoRA: bitsandbytes 4-bit on this CPU

def test_qlora_trains_4bit_for_real(tiny_model_dir, packed_chat, tmp_path):
    from sftpack.training.trainer import build_trainer

    raw = lora_config(tiny_model_dir, packed_chat, tmp_path, validation=False, max_steps=2,
                      save_strategy="no").to_dict()
    raw["model"]["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    cfg = build_config(raw)
    session = build_trainer(cfg)
    layer = session.trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.dtype == torch.uint8
    manifest = train(cfg)
    assert manifest["status"] == "completed" and all(torch.isfinite(torch.tensor(manifest["train_loss"])).reshape(1))
    assert manifest["total_parameters"] == AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters() \
        + manifest["trainable_parameters"]  # 4-bit weights counted at their real number
    assert (tmp_path / FINAL_DIR / "adapter_model.safetensors").is_file()


def test_qlora_without_bitsandbytes_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch, real_data):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    raw = lora_config(tiny_model_dir, (real_data / "fastchat_dummy_conversation.jsonl", None), tmp_path / "run",
                      validation=False).to_dict()
    raw["model"]["quantization"] = {"load_in_4bit": True}
    raw["data"]["out_dir"] = str(tmp_path / "out")
    with pytest.raises(SftpackError, match=r"needs bitsandbytes.*pip install 'sftpack\[qlora\]'"):
        train(build_config(raw))
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- export

@ON_LORA_RUN_WORKER
def test_export_merges_the_adapter(lora_run, tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel

    from sftpack.cli import main as cli

    out, _ = lora_run
    assert cli(["export", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", EXPORT_MANIFEST} <= names
    assert not any(name.startswith("adapter") for name in names)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        str(out / FINAL_DIR)).eval()
    ids = torch.tensor([[1, 42, 7, 99, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    generation = json.loads((merged_dir / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in [generation["eos_token_id"]] + list(
        generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [])
    manifest = json.loads((merged_dir / EXPORT_MANIFEST).read_text())
    assert manifest["method"] == "adapter" and manifest["stop_tokens"] == ["<|im_end|>"]
    assert set(manifest["inputs"]) == {"adapter_model.safetensors"} and "model.safetensors" in manifest["files"]
    assert "exported adapter model" in capsys.readouterr().out


@ON_LORA_RUN_WORKER
def test_export_to_a_gguf_file_merges_the_adapter_and_writes_beside_it(lora_run, tmp_path):
    """`sftpack export RUN --format gguf --out FILE.gguf` (make export's call): the file itself, the
    Modelfile and export.json beside it, the run's stop token in the GGUF."""
    from gguf import GGUFReader

    from sftpack.cli import main as cli

    out, _ = lora_run
    target = tmp_path / "export" / "tiny.gguf"
    assert cli(["export", str(out), "--format", "gguf", "--out", str(target)]) == 0
    assert target.is_file() and (target.parent / "Modelfile").is_file()
    manifest = json.loads((target.parent / EXPORT_MANIFEST).read_text())
    assert manifest["method"] == "adapter" and manifest["gguf"]["outtype"] == "f16"
    assert set(manifest["files"]) == {"tiny.gguf", "Modelfile"}
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([EXPORT_MANIFEST, "Modelfile", "tiny.gguf"])
    fields = GGUFReader(target).fields
    assert bytes(fields["general.name"].parts[-1]).decode() == "tiny"
    assert 'PARAMETER stop "<|im_end|>"' in (target.parent / "Modelfile").read_text()


def test_export_of_a_full_fine_tune_copies_the_model(tiny_model_dir, packed_chat, tmp_path):
    raw = lora_config(tiny_model_dir, packed_chat, tmp_path / "run", validation=False, max_steps=2,
                      save_steps=2, learning_rate=1e-3).to_dict()
    del raw["peft"]
    manifest = train(build_config(raw))
    assert manifest["trainable_parameters"] == manifest["total_parameters"]
    result = export(tmp_path / "run" / "checkpoint-2", tmp_path / "exported")
    names = {p.name for p in (tmp_path / "exported").iterdir()}
    assert "model.safetensors" in names and not names & {"optimizer.pt", "trainer_state.json", "scheduler.pt"}
    assert result["method"] == "full" and result["stop_tokens"] == ["<|im_end|>"]
    original = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    copied = load_file(tmp_path / "exported" / "model.safetensors")
    assert all(torch.equal(original[k], copied[k]) for k in original)
    AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    with pytest.raises(SftpackError, match="not a run folder"):
        export(tmp_path, tmp_path / "nothing")


# ---------------------------------------------------------------- plan: memory per GPU

def test_memory_shape_counts_what_peft_and_transformers_count(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from sftpack.planning.memory import ModelShape

    shape = ModelShape.from_config(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.parameters == model.num_parameters()
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    assert shape.adapter_parameters(8) == peft_model.get_nb_trainable_parameters()[0]


def test_plan_recommends_the_cheapest_method_that_fits(model_dir, tmp_path, capsys):
    from sftpack.cli import main as cli

    def plan(gib):
        assert cli(["plan", "--params", "8B", "--examples", "1000", "--per-device-batch", "1", "--json",
                    "--gpu-memory", str(gib)]) == 0
        return json.loads(capsys.readouterr().out)

    big, mid, small = plan(80), plan(24), plan(10)
    assert set(big["memory_gib"]) == {"full", "lora", "qlora"}
    totals = big["memory_gib"]
    assert totals["full"] > totals["lora"] > totals["qlora"]
    assert all(big["memory_gib_checkpointing"][m] < totals[m] for m in totals)
    assert (big["method"], mid["method"], small["method"]) == ("full", "lora", "qlora")
    assert big["learning_rate"] == 2e-5 and mid["learning_rate"] == small["learning_rate"] == 2e-4  # 7-13B row
    assert big["lora_learning_rate"] == 2e-4
    packed = tmp_path / "planned.yaml"
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"name_or_path": str(model_dir)}, "data": {"train": str(data)},
                                    "train": {"output_dir": "o"}}))
    assert cli(["plan", "--config", str(base), "--gpu-memory", "1.6", "--per-device-batch", "1",
                "--write-config", str(packed)]) == 0
    text = capsys.readouterr().out
    assert "memory per GPU" in text and "method: lora" in text and "LoRA 0.001" in text
    written = yaml.safe_load(packed.read_text())
    assert written["peft"]["target_modules"] == "all-linear" and written["train"]["learning_rate"] == 1e-3
