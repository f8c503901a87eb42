"""plan chooses the data-parallel strategy (planning/strategy.py): DDP when a replica fits, FSDP2
when only a shard does, neither (with the GPUs FSDP2 would need) when not even that; the accelerate
config it writes is the shipped one; the step arithmetic holds for any world size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from sftpack.cli import main as cli
from sftpack.planning.arithmetic import micro_batches_per_epoch, optimizer_steps_per_epoch, plan_batch
from sftpack.planning.strategy import (GIB, Parts, accelerate_config, choose, fsdp_bytes, min_gpus_for_fsdp,
                                       parameters_per_rank)

REPO = Path(__file__).resolve().parent.parent


def test_ddp_when_a_replica_fits_fsdp_when_only_a_shard_does_none_when_neither():
    parts = Parts(weights=10 * GIB, gradients=10 * GIB, optimizer=20 * GIB, activations=4 * GIB, unit=0.5 * GIB)
    assert choose(parts, 1, 80 * GIB).strategy == "single"  # 44 GiB of 72 usable
    assert choose(parts, 4, 80 * GIB).strategy == "ddp"
    small = choose(parts, 4, 24 * GIB)  # replica 44 GiB; shard 40/4 + 4 + 1 = 15 GiB of 21.6 usable
    assert small.strategy == "fsdp" and small.per_gpu_bytes == pytest.approx(15 * GIB)
    assert choose(parts, 1, 24 * GIB).strategy == "none"  # one GPU cannot shard
    too_few = choose(parts, 2, 16 * GIB)  # shard 20 + 5 = 25 GiB of 14.4 usable
    assert too_few.strategy == "none" and too_few.min_gpus_fsdp == 5  # ceil(40 / (14.4 - 5))
    assert fsdp_bytes(parts, too_few.min_gpus_fsdp) <= 16 * GIB * 0.9 < fsdp_bytes(parts, too_few.min_gpus_fsdp - 1)
    assert "FSDP2 fits on 5 GPUs" in too_few.reason
    # Activations that alone fill the GPU: no number of GPUs helps, and the reason says what does.
    huge = Parts(weights=GIB, gradients=GIB, optimizer=GIB, activations=30 * GIB)
    assert min_gpus_for_fsdp(huge, 24 * GIB) is None
    assert "activation checkpointing" in choose(huge, 8, 24 * GIB).reason


def test_parameters_per_rank():
    assert parameters_per_rank(139_584, 2, "fsdp") == 69_792 and parameters_per_rank(139_584, 2, "ddp") == 139_584


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_written_accelerate_config_is_the_shipped_one(strategy):
    shipped = yaml.safe_load((REPO / "configs" / "accelerate" / f"{strategy}.yaml").read_text())
    assert accelerate_config(strategy, shipped["num_processes"]) == shipped
    assert accelerate_config(strategy, 8)["num_processes"] == 8


def test_plan_writes_the_accelerate_config_beside_the_run_config(tmp_path, capsys):
    run_config = tmp_path / "run.yaml"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, '
                                       '"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000}')
    code = cli(["plan", "--params", "70B", "--gpus", "8", "--gpu-memory", "80", "--examples", "1000",
                "--config", str(_base(tmp_path, model)), "--write-config", str(run_config)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "strategy fsdp on 8 GPU(s) of 80 GiB: only a shard fits" in out
    written = yaml.safe_load((tmp_path / "run.accelerate.yaml").read_text())
    assert written == accelerate_config("fsdp", 8)
    assert f"wrote accelerate config: {tmp_path / 'run.accelerate.yaml'}" in out
    code = cli(["plan", "--params", "135M", "--gpus", "2", "--gpu-memory", "80", "--examples", "1000",
                "--config", str(_base(tmp_path, model)), "--write-config", str(tmp_path / "small.yaml")])
    assert code == 0 and "strategy ddp on 2 GPU(s)" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "small.accelerate.yaml").read_text()) == accelerate_config("ddp", 2)
    # 70B on 2 GPUs of 80 GiB: not even shards fit, QLoRA does, with the base and the adapter on each GPU
    code = cli(["plan", "--params", "70B", "--gpus", "2", "--gpu-memory", "80", "--examples", "1000",
                "--config", str(_base(tmp_path, model)), "--write-config", str(tmp_path / "adapter.yaml")])
    out = capsys.readouterr().out
    assert code == 0 and "strategy none on 2 GPU(s)" in out, out
    assert yaml.safe_load((tmp_path / "adapter.yaml").read_text())["peft"]["r"] > 0
    assert yaml.safe_load((tmp_path / "adapter.accelerate.yaml").read_text()) == accelerate_config("ddp", 2)
    assert "(qlora: the base model and the adapter on every GPU)" in (tmp_path / "adapter.accelerate.yaml").read_text()
    assert f"wrote accelerate config: {tmp_path / 'adapter.accelerate.yaml'}" in out


def _base(tmp_path: Path, model: Path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"name_or_path": str(model)}, "data": {"train": "x.jsonl"},
                                    "train": {"output_dir": str(tmp_path / "out")}}))
    return base


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("rows, per_device, accumulation", [(7, 1, 1), (100, 4, 2), (101, 3, 4), (1000, 2, 8)])
def test_step_arithmetic_is_exact_for_any_world_size(gpus, rows, per_device, accumulation):
    """Every rank's dataloader, sharded as the Trainer's is (accelerate's prepare_data_loader),
    has the plan's micro-batches per epoch; the optimizer steps and effective batch follow."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    micro = micro_batches_per_epoch(rows, per_device, gpus)
    for rank in range(gpus):
        loader = prepare_data_loader(DataLoader(list(range(rows)), batch_size=per_device), num_processes=gpus,
                                     process_index=rank, put_on_device=False)
        assert len(loader) == micro, (rank, gpus)
    assert optimizer_steps_per_epoch(micro, accumulation) == max(math.ceil(micro / accumulation), 1)
    batch = plan_batch(per_device, gpus, target=per_device * gpus * accumulation)
    assert batch.accumulation == accumulation and batch.effective == per_device * gpus * accumulation
    assert batch.note is None
