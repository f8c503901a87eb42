"""Training on 2 CPU ranks (gloo) through `accelerate launch -m sftpack train`: DDP (configs/accelerate/
ddp.yaml) and FSDP2 (configs/accelerate/fsdp.yaml) on the same packed rows with eval per source.

The oracle: after the same steps on the same data, FSDP2's final weights equal DDP's within float32
reduction noise, while each FSDP rank held half of the parameters (counted from its local shards).
The FSDP run gets there through a checkpoint: it trains step 1 and saves, then a second launch
resumes from that checkpoint (model, AdamW state, scheduler, data position) and trains step 2, so
the equality also proves the resume exact (a fresh AdamW on step 2 lands far from DDP). What cannot
run as asked (DeepSpeed on CPU, a trainer that would run something else) is refused.

Three launches (DDP beside FSDP step 1, then FSDP resumed) are shared by every test through module
fixtures, on one xdist worker.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import chat_and_alpaca_recipe, finish_launch, launch_train
from sftpack import api as sftpack
from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError
from sftpack.training import distributed
from sftpack.training.args import sft_config
from sftpack.training.runtime import Runtime
from sftpack.training.stage import FINAL_DIR, RUN_MANIFEST

REPO = Path(__file__).resolve().parent.parent
CPU = Runtime(device="cpu", dtype="float32", attn_implementation="sdpa", reason="test")
STEPS = 2
pytestmark = pytest.mark.xdist_group("fsdp")  # the module's launches run once, on one worker


@pytest.fixture(scope="session")
def data(tmp_path_factory, tiny_model_dir) -> dict:
    """A 2-source recipe (eval/<source> splits held out), mixed and packed once: the launches reuse both."""
    folder = tmp_path_factory.mktemp("fsdp-data")
    recipe = chat_and_alpaca_recipe(folder, per_source=24, eval_count=3)
    packed = sftpack.pack([recipe], folder / "out" / "packed", tokenizer=str(tiny_model_dir), max_length=256)
    return {"recipe": recipe, "out_dir": folder / "out", "rows": packed.manifest["totals"]["rows"]}


def _config(tiny_model_dir, data, out: Path, monitor: dict | None = None, **train) -> Path:
    """STEPS steps of one packed row per rank, constant LR (so a run cut at step 1 and resumed
    follows the same schedule as a whole run), eval per source and a checkpoint at the last step."""
    settings = {"output_dir": str(out), "max_steps": STEPS, "per_device_train_batch_size": 1,
                "per_device_eval_batch_size": 4, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
                "logging_steps": 1, "eval_strategy": "steps", "eval_steps": STEPS, "save_strategy": "steps",
                "save_steps": STEPS,
                "report_to": "none", "seed": 7, "data_seed": 7, "disable_tqdm": True, **train}
    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir)},
                        "data": {"recipe": str(data["recipe"]), "max_length": 256, "out_dir": str(data["out_dir"])},
                        "train": settings, "monitor": monitor or {}})
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_model_dir, data) -> dict:
    """ddp: STEPS steps; cut: fsdp step 1, saved; fsdp: resumed from cut's checkpoint-1 to STEPS
    (with a sample prompt answered before and after)."""
    root = tmp_path_factory.mktemp("fsdp-runs")
    ddp = launch_train("ddp.yaml", _config(tiny_model_dir, data, root / "ddp"))
    cut = launch_train("fsdp.yaml", _config(tiny_model_dir, data, root / "cut", max_steps=1, eval_strategy="no",
                                       save_steps=1))
    out = {"ddp": (root / "ddp", finish_launch(ddp)), "cut": (root / "cut", finish_launch(cut))}
    (root / "fsdp").mkdir()
    shutil.copytree(root / "cut" / "checkpoint-1", root / "fsdp" / "checkpoint-1")
    # Sample prompts: generate runs a forward without backward, after which FSDP2 leaves its root
    # module gathered; the per-rank count must still see the shards.
    fsdp = launch_train("fsdp.yaml", _config(tiny_model_dir, data, root / "fsdp", resume_from_checkpoint=True,
                                        monitor={"sample_prompts": ["Hi"], "sample_max_new_tokens": 2}))
    out["fsdp"] = (root / "fsdp", finish_launch(fsdp))
    return out


def _manifest(runs, name) -> dict:
    return json.loads((runs[name][0] / RUN_MANIFEST).read_text())


def _final(runs, name) -> dict[str, torch.Tensor]:
    return load_file(str(runs[name][0] / FINAL_DIR / "model.safetensors"))


def _evals(runs, name) -> list[dict]:
    state = json.loads((runs[name][0] / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [log for log in state["log_history"] if "eval_loss" in log]


def test_ddp_ranks_each_hold_the_whole_model(runs, data):
    manifest = _manifest(runs, "ddp")
    dist = manifest["distributed"]
    assert (dist["strategy"], dist["world_size"], dist["backend"], dist["sharding"]) == ("ddp", 2, "gloo", None)
    assert dist["parameters"]["per_rank"] == [dist["parameters"]["total"]] * 2
    assert manifest["steps"] == STEPS
    # Each step saw one row per process: an epoch is ceil(rows / 2) steps.
    assert manifest["epochs"] == pytest.approx(STEPS / math.ceil(data["rows"] / 2))
    assert runs["ddp"][1][0].count(f"completed: {STEPS} steps") == 1  # one summary, from rank 0


def test_fsdp_shards_the_parameters_and_records_it(runs, tiny_model_dir):
    dist = _manifest(runs, "fsdp")["distributed"]
    assert (dist["strategy"], dist["world_size"], dist["backend"]) == ("fsdp", 2, "gloo")
    assert dist["sharding"]["fsdp_version"] == 2 and dist["sharding"]["state_dict_type"] == "FULL_STATE_DICT"
    total, per_rank = dist["parameters"]["total"], dist["parameters"]["per_rank"]
    assert total == _manifest(runs, "ddp")["distributed"]["parameters"]["total"]
    # dim-0 shards: each rank holds half of every weight (rounded up per tensor), together the whole model.
    assert sum(per_rank) == total and max(per_rank) - min(per_rank) <= 64
    assert len(_manifest(runs, "fsdp")["samples"]) == 1  # generate ran on the sharded model
    log = "".join(runs["fsdp"][1] + runs["cut"][1])
    assert "find_unused_parameters" not in log  # DDP's warning: FSDP was not dropped for DDP


def test_fsdp_ends_with_the_weights_ddp_ends_with(runs, tiny_model_dir):
    """The oracle: same steps, same rows, same final weights within float32 reduction noise."""
    ddp, fsdp = _final(runs, "ddp"), _final(runs, "fsdp")
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert set(ddp) <= set(fsdp)  # FSDP's full state dict also names the tied lm_head.weight
    for key, weight in ddp.items():
        torch.testing.assert_close(fsdp[key], weight, atol=2e-6, rtol=1e-5, msg=key)
    moved = max((ddp[key] - start[key]).abs().max().item() for key in start)
    assert moved > 1e-3  # training changed the weights: the equality is not of two untouched models


def test_fsdp_final_is_a_full_model_from_pretrained_loads(runs, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(runs["fsdp"][0] / FINAL_DIR)
    for (name, weight), (_, before) in zip(model.state_dict().items(), start.state_dict().items()):
        assert weight.shape == before.shape, name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_fsdp_evaluates_each_source_as_ddp_does(runs):
    fsdp, ddp = _evals(runs, "fsdp"), _evals(runs, "ddp")
    assert len(fsdp) == len(ddp) == 1
    for key in ("eval_chat_loss", "eval_alpaca_loss", "eval_loss"):
        assert fsdp[0][key] == pytest.approx(ddp[0][key], rel=1e-5), key


def test_fsdp_checkpoint_holds_sharded_state_and_the_run_resumed_from_it(runs):
    checkpoint = runs["cut"][0] / "checkpoint-1"
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "scheduler.pt", "trainer_state.json"} <= \
        {p.name for p in checkpoint.iterdir()}
    assert _manifest(runs, "cut")["steps"] == 1
    manifest = _manifest(runs, "fsdp")
    assert manifest["resumed_from"].endswith("checkpoint-1") and manifest["steps"] == STEPS
    # The step after the checkpoint moved the weights well past the oracle's tolerance.
    step1, step2 = _final(runs, "cut"), _final(runs, "fsdp")
    assert max((step2[key] - step1[key]).abs().max().item() for key in step1) > 1e-3


# ---------------------------------------------------------------- refused, never downgraded

def _cfg(tiny_model_dir, tmp_path, **train):
    return build_config({"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(tmp_path)},
                         "train": {"output_dir": str(tmp_path / "out"), "report_to": "none", **train}})


def test_deepspeed_on_cpu_ranks_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """What `accelerate launch` with a DeepSpeed config exports, on this CPU machine: refused with
    what to use instead (accelerate would have trained gloo DDP)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(SftpackError, match=r"DeepSpeed was asked for .* no GPU.*configs/accelerate/fsdp.yaml"):
        sft_config(_cfg(tiny_model_dir, tmp_path), CPU)


def test_fsdp1_on_cpu_ranks_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(SftpackError, match="only FSDP2 runs on CPU.*fsdp_version: 2"):
        sft_config(_cfg(tiny_model_dir, tmp_path), CPU)


def test_a_trainer_that_would_run_something_else_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """The launch asks for FSDP, the trainer built in this single process runs without it: refused."""
    from transformers import AutoModelForCausalLM, TrainingArguments, Trainer

    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    assert distributed.running(trainer) == "single"
    distributed.check(trainer, "single")
    with pytest.raises(SftpackError, match="asks for fsdp but the trainer would run single"):
        distributed.check(trainer, "fsdp")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.requested({}) == "fsdp"
