"""Packed training is exact on every model family transformers ships that builds as a tiny model, or
trains the same rows unpacked and says so (pipeline/training/isolation.py, issue 28).

Per family: a tiny random-init model from the family's own config class (width 64, 2 layers of
different kinds where it has several, SmolLM2's tokenizer), 6 real fastchat conversations packed
into rows of 512 tokens, one eval over every row in one batch through the trainer `sftpack train`
builds; for two families (llama, gpt_oss) through the whole `sftpack train` instead (one step at
learning rate 0, then the eval), its manifest checked as the trainer is.
Float32, with the attention `auto` picks on this CPU. `eval_loss` must equal the token-weighted loss
of the same sequences run one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM

from conftest import finish_launch, launch_train, pack_lines

import sftpack
from sftpack.cli import main as cli
from sftpack.config.run_config import ModelConfig, build_config
from sftpack.errors import SftpackError
from sftpack.training.data import UnpackedCollator
from sftpack.training.isolation import tiny_config
from sftpack.training.runtime import resolve_runtime
from sftpack.training.stage import FINAL_DIR, RUN_MANIFEST
from sftpack.training.trainer import build_trainer

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=1024)
LINEAR_FULL = ["linear_attention", "full_attention"]
MAMBA = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=32)

# model_type -> (config overrides, how packed rows stay apart on this CPU with attention auto).
FAMILIES = {
    "llama": ({}, "position_ids"),
    "qwen3": ({}, "position_ids"),
    "smollm3": ({"no_rope_layers": [1, 0]}, "position_ids"),  # a NoPE layer
    "olmo3": ({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16}, "position_ids"),
    "gemma3_text": ({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16}, "position_ids"),
    # Sinks, sliding window; no sdpa (auto picks eager), and its masks ignore position_ids.
    "gpt_oss": ({"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 16}, "unpacked"),
    "qwen3_5_text": ({"layer_types": LINEAR_FULL, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                      "linear_num_key_heads": 2, "linear_num_value_heads": 4}, "unpacked"),
    "qwen3_next": ({"layer_types": LINEAR_FULL, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "num_experts": 4,
                    "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
                   "unpacked"),
    "lfm2": ({"full_attn_idxs": [1], "block_auto_adjust_ff_dim": False}, "unpacked"),
    "nemotron_h": ({"num_hidden_layers": 3, "layers_block_type": ["mamba", "attention", "mlp"], "mamba_num_heads": 8,
                    "mamba_head_dim": 16, "ssm_state_size": 16, "n_groups": 1, "chunk_size": 32}, "unpacked"),
    "falcon_h1": ({**MAMBA, "mamba_d_ssm": 128}, "unpacked"),
    "granitemoehybrid": ({**MAMBA, "layer_types": ["mamba", "attention"], "num_local_experts": 4,
                          "shared_intermediate_size": 32}, "unpacked"),
    "bamba": ({**MAMBA, "attn_layer_indices": [1]}, "unpacked"),
    "jamba": ({"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
               "num_experts": 4, "mamba_d_state": 16}, "unpacked"),
    "mamba2": ({"num_heads": 8, "state_size": 16, "n_groups": 1, "chunk_size": 32}, "unpacked"),
    "zamba2": ({"layers_block_type": ["mamba", "hybrid"], "hybrid_layer_ids": [1], "n_mamba_heads": 8,
                "mamba_d_state": 16, "chunk_size": 32}, "unpacked"),
}


def family_config(family: str, tokenizer):
    overrides, _ = FAMILIES[family]
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    return CONFIG_MAPPING[family](**{**SMALL, **ids, **overrides})


@pytest.fixture(scope="session")
def packed_six(real_data, model_dir, tmp_path_factory) -> Path:
    """6 real fastchat conversations (59-125 tokens) packed into rows of at most 512 tokens: the
    first row holds several of them (the eval's cost is per token: SmolLM2's 49k-wide head)."""
    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
    return pack_lines(lines[:6], model_dir, 512, tmp_path_factory.mktemp("six"), "six")


@pytest.fixture(scope="session")
def family_model(tmp_path_factory, smol_tokenizer):
    """family -> a folder with a tiny random-init model of that family and SmolLM2's tokenizer."""
    built = {}

    def get(family: str) -> Path:
        if family not in built:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(family_config(family, smol_tokenizer))
            built[family] = tmp_path_factory.mktemp(family)
            model.save_pretrained(built[family])
            smol_tokenizer.save_pretrained(built[family])
        return built[family]

    return get


@functools.cache
def sequences_alone_loss(model_dir: Path, packed: Path) -> float:
    """Token-weighted loss of every packed sequence run on its own (no packing, no padding), float64 sums.
    Cached: a family's model folder is written once per session and never changed."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for row in datasets.load_from_disk(str(packed)):
            start = 0
            for length in row["seq_lengths"]:
                ids = torch.tensor(row["input_ids"][start:start + length])
                labels = torch.tensor(row["labels"][start:start + length])[1:]  # the first token is never a target
                keep = labels != -100
                logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1][keep]
                total += torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum").double()
                count += int(keep.sum())
                start += length
    return float(total / count)


def run_config(model_dir: Path, packed: Path, out: Path, **data) -> dict:
    """One step at learning rate 0, then one eval over every row in one batch."""
    return {"model": {"name_or_path": str(model_dir)},
            "data": {"train": str(packed), "validation": str(packed), "max_length": 512, **data},
            "train": {"output_dir": str(out), "max_steps": 1, "learning_rate": 0.0, "per_device_train_batch_size": 1,
                      "per_device_eval_batch_size": 64, "eval_strategy": "steps", "eval_steps": 1,
                      "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
                      "router_aux_loss_coef": 0.0}}  # eval_loss is the LM loss alone (an MoE's aux loss adds to it)


CLI_FAMILIES = ["llama", "gpt_oss"]
"""Checked through the whole `sftpack train` (test_sftpack_train_one_step_at_lr_0) instead of the trainer alone."""


def check_probe(family: str, isolation: dict, model_dir: Path) -> None:
    """The probe's verdict: packed feeds exact, or visibly leaking or raising; a leak is always
    visible to it (the row run as one sequence differs). Its tiny copy keeps the family."""
    assert isolation["route"] == FAMILIES[family][1], isolation
    assert isolation["feeds"]["leak"] > 1e-2
    if isolation["route"] != "unpacked":
        assert isolation["max_difference"] < 1e-5
    else:
        assert all(isinstance(v, str) or v > 1e-4 for v in isolation["feeds"].values()), isolation["feeds"]
    tiny = tiny_config(AutoConfig.from_pretrained(model_dir))
    assert tiny.model_type == family and tiny.hidden_size == 64 and tiny.vocab_size == 256


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in CLI_FAMILIES])
def test_packed_eval_loss_equals_the_sequences_alone(family, family_model, packed_six, tmp_path):
    """Every family through the trainer train builds (probe, collator, model load): one eval over every
    row in one batch equals the sequences alone, and the probe's verdict (check_probe)."""
    model_dir = family_model(family)
    session = build_trainer(build_config(run_config(model_dir, packed_six, tmp_path)))
    check_probe(family, dataclasses.asdict(session.isolation), model_dir)
    assert session.isolation.packed == (FAMILIES[family][1] != "unpacked")
    eval_loss = session.trainer.evaluate()["eval_loss"]
    assert eval_loss == pytest.approx(sequences_alone_loss(model_dir, packed_six), abs=1e-5)


@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_sftpack_train_one_step_at_lr_0(family, family_model, packed_six, tmp_path, capsys):
    """`sftpack train` as a user runs it: packed (llama), unpacked with auto picking eager (gpt-oss);
    the manifest records the probe, whose verdict is checked as for every other family, and the
    one eval's loss equals the sequences alone."""
    model_dir = family_model(family)
    config = tmp_path / "run.yaml"
    raw = run_config(model_dir, packed_six, tmp_path / "run")
    raw["train"]["metric_for_best_model"] = "eval_loss"  # the manifest's best_eval_loss: the one eval's loss
    config.write_text(yaml.safe_dump(raw))
    assert cli(["train", "--config", str(config)]) == 0
    manifest = json.loads((tmp_path / "run" / RUN_MANIFEST).read_text())
    check_probe(family, manifest["isolation"], model_dir)
    assert manifest["runtime"]["attn_implementation"] == ("eager" if family == "gpt_oss" else "sdpa")
    assert manifest["steps"] == 1
    assert manifest["best_eval_loss"] == pytest.approx(sequences_alone_loss(model_dir, packed_six), abs=1e-5)


def test_unpacked_step_gives_the_gradients_of_the_sequences_alone(family_model, packed_six, tmp_path):
    """One training step on the unpacked route (Qwen3.5-style conv + attention: LFM2) back-propagates
    exactly the token-weighted loss of the packed rows' sequences run one at a time."""
    model_dir = family_model("lfm2")
    session = build_trainer(build_config(run_config(model_dir, packed_six, tmp_path)))
    trainer = session.trainer
    assert isinstance(trainer.data_collator, UnpackedCollator)
    rows = [trainer.train_dataset[0]]
    batch = trainer.data_collator(rows)
    assert batch["input_ids"].shape[0] == len(rows[0]["seq_lengths"]) > 2
    targets = int((batch["labels"] != -100).sum())
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch, num_items_in_batch=targets).backward()
    unpacked = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}

    alone = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    total = 0
    for row in rows:
        start = 0
        for length in row["seq_lengths"]:
            ids = torch.tensor(row["input_ids"][start:start + length])[None]
            labels = torch.tensor(row["labels"][start:start + length])[None]
            labels[0, 0] = -100
            logits = alone(input_ids=ids, use_cache=False).logits[0, :-1]
            total = total + torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="sum")
            start += length
    (total / targets).backward()
    grads = dict(alone.named_parameters())
    assert unpacked.keys() == {name for name, p in grads.items() if p.grad is not None}
    for name, grad in unpacked.items():
        torch.testing.assert_close(grad, grads[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_require_refuses_before_any_work(family_model, real_data, tmp_path, capsys):
    """`data.packing_isolation: require` on a model that would train unpacked: a refusal naming the model
    type, why and what to install, before validate and pack write anything, and no traceback."""
    model_dir = family_model("qwen3_next")
    raw = run_config(model_dir, real_data / "fastchat_dummy_conversation.jsonl", tmp_path / "run",
                     packing_isolation="require", out_dir=str(tmp_path / "data"))
    raw["data"]["validation"] = None
    raw["train"]["eval_strategy"] = "no"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli(["train", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "data.packing_isolation require" in err and "model type qwen3_next" in err
    assert "can't keep packed sequences apart" in err and "causal-conv1d" in err and "CUDA GPU" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_two_process_ddp_trains_unpacked_with_an_adapter(family_model, packed_six, tmp_path):
    """The same guarantee for 2-process DDP (gloo, CPU): a family that cannot keep packed rows apart here
    trains them unpacked on both processes, and says so; the run trains a LoRA adapter, so the one
    launch also covers DDP with PEFT (packed DDP: tests/test_fsdp.py). (`sanity` builds its trainer
    through the same build_trainer; tests/test_sanity.py checks its report names the route.)"""
    model_dir = family_model("lfm2")
    raw = run_config(model_dir, packed_six, tmp_path / "run")
    raw["train"].update(max_steps=2, eval_strategy="no", learning_rate=1e-3)
    raw["data"]["validation"] = None
    raw["peft"] = {"r": 4, "lora_alpha": 8}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))

    stdout, stderr = finish_launch(launch_train("ddp.yaml", config), timeout=300)
    manifest = json.loads((tmp_path / "run" / RUN_MANIFEST).read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["steps"] == 2
    assert manifest["isolation"]["route"] == "unpacked" and manifest["isolation"]["model_type"] == "lfm2"
    assert "Training the same rows UNPACKED" in stderr + stdout
    assert (tmp_path / "run" / FINAL_DIR / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / FINAL_DIR / "model.safetensors").exists()  # the adapter alone


def test_plan_and_report_say_when_a_model_trains_unpacked(family_model, packed_six, tmp_path):
    """`plan` and the packed report name the model type, why, and the cost in rows; not for one that packs."""
    totals = json.loads((packed_six / "manifest.json").read_text())["totals"]
    rows = f"its {totals['rows']} packed rows train as {totals['sequences_packed']} padded rows, one per sequence"
    plan = sftpack.plan(model=str(family_model("qwen3_5_text")), data=str(packed_six))
    [note] = [n for n in plan.notes if "UNPACKED" in n]
    assert "model type qwen3_5_text" in note and rows in note and "causal-conv1d" in note
    assert not [n for n in sftpack.plan(model=str(family_model("llama")), data=str(packed_six)).notes
                if "UNPACKED" in n]
    report = sftpack.report([str(packed_six)], tmp_path / "r.html", tokenizer=str(family_model("qwen3_5_text")))
    [finding] = [f for f in report["findings"] if f["kind"] == "trains_unpacked"]
    assert rows in finding["message"] and "Rows that train unpacked" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("family", ["gpt_oss", "mamba2", "qwen3_next"])
def test_auto_attention_is_one_the_model_can_load(family, smol_tokenizer, tmp_path):
    family_config(family, smol_tokenizer).save_pretrained(tmp_path)  # config.json is all it reads
    runtime = resolve_runtime(ModelConfig(name_or_path=str(tmp_path)))
    if family == "qwen3_next":
        assert runtime.attn_implementation == "sdpa"
        return
    cls = {"gpt_oss": "GptOssForCausalLM", "mamba2": "Mamba2ForCausalLM"}[family]
    assert runtime.attn_implementation == "eager" and f"{cls} has no sdpa support" in runtime.reason
    with pytest.raises(SftpackError, match=f"model.attn_implementation sdpa: {cls} has no sdpa support; use eager"):
        resolve_runtime(ModelConfig(name_or_path=str(tmp_path), attn_implementation="sdpa"))
