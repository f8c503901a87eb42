"""`sftpack plan`: size rows, batch and step arithmetic (pinned to the Trainer), schedules, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from sftpack.errors import SftpackError
from sftpack.planning.stage import PlanRequest, make_plan
from sftpack.planning.arithmetic import (
    micro_batches_per_epoch,
    optimizer_steps_per_epoch,
    plan_batch,
    total_steps,
    warmup_steps_for,
)
from sftpack.planning.format import PLAN_KEYS, SCHEDULES, draw_schedules
from sftpack.planning.table import SIZE_TABLE, count_parameters, parse_params, pick_row
from sftpack.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def packed_folder(root: Path, rows: int, max_length: int = 512) -> Path:
    """A stand-in packed folder: plan reads only the manifest's totals.rows and options.max_length."""
    folder = root / "packed"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"totals": {"rows": rows}, "options": {"max_length": max_length}}))
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(["plan", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- parameter count and size rows -----------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("7e9", 7_000_000_000), ("7B", 7_000_000_000), ("7b", 7_000_000_000), ("1.5B", 1_500_000_000),
    ("135M", 135_000_000), ("134515008", 134_515_008), ("134_515_008", 134_515_008), ("70G", 70_000_000_000),
    ("1T", 10**12), (" 500k ", 500_000),
])
def test_parse_params(text, expected):
    assert parse_params(text) == expected


@pytest.mark.parametrize("text", ["", "7X", "B", "-7B", "0", "0.1", "7 B B", "seven"])
def test_parse_params_rejects(text):
    with pytest.raises(SftpackError, match="--params"):
        parse_params(text)


def test_count_parameters_from_config_only(model_dir):
    # SmolLM2-135M: 134,515,008 with the output layer tied to the embeddings (counted once).
    assert count_parameters(model_dir) == 134_515_008


def test_count_parameters_needs_config_json(tmp_path):
    with pytest.raises(SftpackError, match="no config.json.*--params"):
        count_parameters(tmp_path)


SEED_ROWS = {
    "under 1B": dict(learning_rate=1e-4, effective_batch_size=32, num_train_epochs=3, warmup_ratio=0.1,
                     weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="cosine"),
    "1-3B": dict(learning_rate=5e-5, effective_batch_size=32, num_train_epochs=3, warmup_ratio=0.03,
                 weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="cosine"),
    "7-13B": dict(learning_rate=2e-5, effective_batch_size=64, num_train_epochs=3, warmup_ratio=0.03,
                  weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine"),
    "30-70B": dict(learning_rate=1e-5, effective_batch_size=128, num_train_epochs=2, warmup_ratio=0.03,
                   weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine"),
}


def test_table_is_sorted_and_seeded():
    assert [row.label for row in SIZE_TABLE] == list(SEED_ROWS)
    for row in SIZE_TABLE:
        assert row.min_params < row.max_params
        assert {k: getattr(row, k) for k in SEED_ROWS[row.label]} == SEED_ROWS[row.label]
    for lower, upper in zip(SIZE_TABLE, SIZE_TABLE[1:]):
        assert lower.max_params < upper.min_params


@pytest.mark.parametrize("params, label, note", [
    ("1B", "1-3B", None), ("1.7B", "1-3B", None), ("3B", "1-3B", None),
    ("7B", "7-13B", None), ("8B", "7-13B", None), ("13B", "7-13B", None),
    ("30B", "30-70B", None), ("70B", "30-70B", None),
    ("135M", "under 1B", None), ("500M", "under 1B", None), ("405B", "30-70B", "above the table"),
    ("4B", "1-3B", "between"), ("5B", "7-13B", "between"), ("20B", "30-70B", "between"),
])
def test_each_size_row_and_outside_the_table(params, label, note):
    plan = make_plan(PlanRequest(params=params, examples=1000))
    assert plan.row.label == label
    seed = SEED_ROWS[label]
    # Nothing given beyond the size: every starting value is the row's.
    assert plan.values["learning_rate"] == seed["learning_rate"]
    assert plan.values["effective_batch_size"] == seed["effective_batch_size"]
    assert plan.values["num_train_epochs"] == seed["num_train_epochs"]
    assert plan.values["warmup_ratio"] == seed["warmup_ratio"]
    assert plan.values["weight_decay"] == seed["weight_decay"]
    assert plan.values["max_grad_norm"] == seed["max_grad_norm"]
    assert plan.values["lr_scheduler_type"] == "cosine"
    if note is None:
        assert not any("table" in n or "between" in n for n in plan.notes)
    else:
        assert any(note in n and label in n for n in plan.notes)


def test_real_model_has_its_row(model_dir):
    plan = make_plan(PlanRequest(model=str(model_dir), examples=100))
    assert plan.num_params == 134_515_008
    assert plan.row.label == "under 1B"
    assert not any("table" in n for n in plan.notes)


# --- batch arithmetic ------------------------------------------------------------------


def test_divisible_target():
    batch = plan_batch(per_device=4, gpus=2, target=64)
    assert (batch.accumulation, batch.effective, batch.note) == (8, 64, None)


def test_non_divisible_target_rounds_and_says_so():
    batch = plan_batch(per_device=2, gpus=8, target=100)  # 100 / 16 = 6.25 -> 6
    assert (batch.accumulation, batch.effective) == (6, 96)
    assert "not divisible" in batch.note and "effective batch 96" in batch.note
    batch = plan_batch(per_device=4, gpus=4, target=24)  # 24 / 16 = 1.5 -> 2 (halves round up)
    assert (batch.accumulation, batch.effective) == (2, 32)


def test_target_smaller_than_one_micro_batch_round():
    batch = plan_batch(per_device=4, gpus=4, target=8)
    assert (batch.accumulation, batch.effective) == (1, 16)
    assert "smaller than per-device x GPUs" in batch.note and "--per-device-batch" in batch.note


def test_examples_fewer_than_one_batch():
    plan = make_plan(PlanRequest(params="1B", examples=10, per_device_batch=4, gpus=2, target_batch=32))
    v = plan.values
    assert plan.micro_batches_per_epoch == 2  # ceil(10 / (4 x 2))
    assert (v["gradient_accumulation_steps"], v["optimizer_steps_per_epoch"], v["total_steps"]) == (4, 1, 3)
    assert v["warmup_steps"] == 1  # ceil(3 x 0.03)
    assert any("fewer than one effective batch" in n for n in plan.notes)


def test_multi_gpu_step_counts():
    plan = make_plan(PlanRequest(params="7B", examples=10_000, gpus=8, per_device_batch=2, target_batch=100))
    v = plan.values
    assert plan.micro_batches_per_epoch == 625  # ceil(10000 / 16)
    assert v["gradient_accumulation_steps"] == 6
    assert v["optimizer_steps_per_epoch"] == 105  # ceil(625 / 6)
    assert v["total_steps"] == 315
    assert v["warmup_steps"] == 10  # ceil(315 x 0.03)


@pytest.mark.parametrize("rows, per_device, accumulation, epochs, warmup", [
    (10, 4, 8, 3, 0.03),   # fewer rows than one effective batch
    (100, 4, 2, 3, 0.1),   # even
    (101, 4, 3, 2.5, 0.05),  # partial last micro-batch and accumulation, fractional epochs
    (7, 8, 1, 1, 5),       # fewer rows than one micro-batch; warmup in whole steps
])
def test_step_counts_match_the_trainer(tmp_path, rows, per_device, accumulation, epochs, warmup):
    """Contract: the plan's counts equal what transformers' Trainer computes for the same run."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=per_device,
                             gradient_accumulation_steps=accumulation, num_train_epochs=epochs,
                             warmup_steps=warmup, report_to=[], use_cpu=True)
    dataset = [{"x": torch.zeros(1)} for _ in range(rows)]
    trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset)
    loader = trainer.get_train_dataloader()
    _, per_epoch, _, _, _, _, max_steps = trainer.set_initial_training_values(args, loader)

    micro = micro_batches_per_epoch(rows, per_device, gpus=1)
    assert micro == len(loader)
    assert optimizer_steps_per_epoch(micro, accumulation) == per_epoch
    assert total_steps(epochs, per_epoch) == max_steps
    assert warmup_steps_for(warmup, max_steps) == args.get_warmup_steps(max_steps)


# --- schedules and outputs -------------------------------------------------------------


def scheduler_lrs(name: str, lr: float, warmup: int, total: int) -> list[float]:
    """The LR before each of `total` updates, plus the end, by stepping a real scheduler."""
    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total + 1):
        lrs.append(scheduler.get_last_lr()[0])
        opt.step()
        scheduler.step()
    return lrs


def test_plot_png_and_curves_match_get_scheduler(tmp_path, capsys):
    png = tmp_path / "lr.png"
    code, _, err = run_cli(capsys, "--params", "1B", "--examples", 500, "--per-device-batch", 4,
                           "--target-batch", 8, "--plot", png)
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 450)
    assert len(data) > 10_000

    plan = make_plan(PlanRequest(params="1B", examples=500, per_device_batch=4, target_batch=8))
    v = plan.values
    assert (v["total_steps"], v["warmup_steps"]) == (189, 6)  # ceil(125 / 2) = 63 per epoch x 3
    lines = {line.get_label(): line for line in draw_schedules(plan).axes[0].get_lines()}
    for name in SCHEDULES:
        expected = scheduler_lrs(name, v["learning_rate"], v["warmup_steps"], v["total_steps"])
        assert list(lines[name].get_xdata()) == list(range(v["total_steps"] + 1))
        assert lines[name].get_ydata() == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_sample_point_table(capsys):
    code, out, _ = run_cli(capsys, "--params", "7B", "--examples", 6400, "--per-device-batch", 8)
    assert code == 0
    expected = {name: scheduler_lrs(name, 2e-5, 9, 300) for name in SCHEDULES}  # 100 steps/epoch x 3
    rows = {line.split()[0] if not line.startswith("  warmup end") else "warmup end": line.split()[-4:]
            for line in out.split("learning rate at sample points")[1].splitlines()[2:]}
    for label, step in [("start", 0), ("warmup end", 9), ("25%", 75), ("50%", 150), ("75%", 225), ("100%", 300)]:
        step_text, *lrs = rows[label]
        assert int(step_text) == step
        for name, text in zip(SCHEDULES, lrs):
            assert float(text) == pytest.approx(expected[name][step], rel=1e-3, abs=1e-12)


def test_json_has_exactly_the_keys(capsys):
    code, out, err = run_cli(capsys, "--params", "7B", "--examples", 10_000, "--gpus", 8,
                             "--per-device-batch", 2, "--target-batch", 100, "--json")
    assert code == 0
    obj = json.loads(out)
    assert list(obj) == list(PLAN_KEYS) == [
        "learning_rate", "effective_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps",
        "num_gpus", "num_train_epochs", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
        "lr_scheduler_type", "optimizer_steps_per_epoch", "total_steps", "lora_learning_rate", "memory_gib",
        "memory_gib_checkpointing", "method"]
    assert obj["effective_batch_size"] == 96 and obj["total_steps"] == 315
    assert "not divisible" in err  # notes go to stderr, stdout stays one object


def test_data_folder_gives_the_rows(tmp_path, capsys):
    folder = packed_folder(tmp_path, rows=321, max_length=256)
    code, out, _ = run_cli(capsys, "--params", "1B", "--data", folder, "--per-device-batch", 4, "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["optimizer_steps_per_epoch"] == math.ceil(math.ceil(321 / 4) / 8)
    code, out, _ = run_cli(capsys, "--params", "1B", "--data", folder, "--per-device-batch", 4)
    assert "321 from" in out and "at most 8,192" in out  # 32 rows x 256 tokens


def test_written_config_loads(tmp_path, capsys, model_dir):
    from sftpack.config.run_config import load_config

    folder = packed_folder(tmp_path, rows=1000)
    out_file = tmp_path / "planned.yaml"
    code, out, err = run_cli(capsys, "--model", model_dir, "--data", folder, "--target-batch", 16,
                             "--json", "--write-config", out_file)
    assert code == 0, err
    planned = json.loads(out)
    cfg = load_config(out_file)
    assert cfg.model.name_or_path == str(model_dir)
    assert cfg.data.train == str(folder)
    assert dict(cfg.train) == {
        "learning_rate": planned["learning_rate"],
        "per_device_train_batch_size": planned["per_device_train_batch_size"],
        "gradient_accumulation_steps": planned["gradient_accumulation_steps"],
        "num_train_epochs": planned["num_train_epochs"],
        "warmup_steps": 0.1,  # the under 1B row's ratio (transformers 5 reads a float below 1 so)
        "weight_decay": planned["weight_decay"],
        "max_grad_norm": planned["max_grad_norm"],
        "lr_scheduler_type": "cosine",
    }


def test_base_config_fills_what_flags_leave_out(tmp_path, capsys, model_dir):
    from sftpack.config.run_config import load_config

    # The demo config without its CPU-sized max_steps, so epochs decide the step counts.
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["train"].pop("max_steps")
    raw["train"].update(num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    base_file = tmp_path / "base.yaml"
    base_file.write_text(yaml.safe_dump(raw))
    out_file = tmp_path / "planned.yaml"
    code, out, err = run_cli(capsys, "--model", model_dir, "--config", base_file, "--examples", 800,
                             "--target-batch", 16, "--json", "--write-config", out_file)
    assert code == 0, err
    obj = json.loads(out)
    # base: lr 1e-4, per-device 4, warmup 0.1; the flag's target replaces its accumulation of 2.
    assert (obj["learning_rate"], obj["per_device_train_batch_size"], obj["warmup_ratio"]) == (1e-4, 4, 0.1)
    assert (obj["gradient_accumulation_steps"], obj["effective_batch_size"]) == (4, 16)
    assert (obj["optimizer_steps_per_epoch"], obj["total_steps"], obj["warmup_steps"]) == (50, 150, 15)
    cfg, base = load_config(out_file), load_config(base_file)
    assert cfg.train["gradient_accumulation_steps"] == 4
    assert cfg.train["output_dir"] == base.train["output_dir"]  # the rest of the base is kept
    assert cfg.data == base.data

    code, out, _ = run_cli(capsys, "--model", model_dir, "--config", base_file, "--examples", 800, "--json")
    assert json.loads(out)["gradient_accumulation_steps"] == 2  # no target: the base config's


def test_write_config_without_data_is_refused_before_writing(tmp_path, capsys, model_dir):
    out_file, png = tmp_path / "planned.yaml", tmp_path / "lr.png"
    code, _, err = run_cli(capsys, "--model", model_dir, "--examples", 100, "--write-config", out_file,
                           "--plot", png)
    assert code == 2 and "data.train" in err
    assert not out_file.exists() and not png.exists()


@pytest.mark.parametrize("argv, message", [
    (["--params", "7X"], "--params '7X': expected a count like"),
    (["--model", "{empty}"], "no config.json"),
    (["--params", "7B", "--data", "{empty}"], "no manifest.json"),
    (["--params", "7B", "--gpus", "0"], "--gpus 0: must be a positive"),
    (["--params", "7B", "--per-device-batch", "-1"], "--per-device-batch -1: must be a positive"),
    (["--params", "7B", "--examples", "0"], "--examples 0: must be a positive"),
    (["--params", "7B", "--epochs", "0"], "--epochs 0.0: must be a positive"),
    (["--params", "7B", "--target-batch", "-8"], "--target-batch -8: must be a positive"),
    (["--model", "{empty}", "--params", "7B"], "not both"),
    ([], "give --model PATH"),
    (["--params", "7B", "--plot", "{empty}/lr.png"], "--plot needs the number of training rows"),
])
def test_errors_are_one_clear_message_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sftpack plan: ") and message in err


def test_write_json_is_the_json_object(tmp_path, capsys):
    """`--write-json` (what `make plan` depends on) holds exactly what `--json` prints."""
    out_file = tmp_path / "plan" / "plan.json"
    code, out, err = run_cli(capsys, "--params", "7B", "--examples", 6400, "--json", "--write-json", out_file)
    assert code == 0, err
    assert json.loads(out_file.read_text()) == json.loads(out)
    assert f"wrote json: {out_file}" in err


def test_demo_config_follows_plan_or_says_where_it_deviates():
    row, _ = pick_row(134_515_008)
    assert row.label == "under 1B"
    wanted = {"learning_rate": row.learning_rate, "warmup_steps": row.warmup_ratio, "weight_decay": row.weight_decay,
              "max_grad_norm": row.max_grad_norm, "lr_scheduler_type": row.lr_scheduler_type,
              "num_train_epochs": row.num_train_epochs, "gradient_accumulation_steps": row.effective_batch_size}
    lines = (REPO / "configs" / "demo.yaml").read_text().splitlines()
    train = yaml.safe_load("\n".join(lines))["train"]
    for key, value in wanted.items():
        if key == "gradient_accumulation_steps":  # the effective batch, with one process
            got = train["per_device_train_batch_size"] * train[key]
        else:
            got = train[key]
        said = "\n".join(line for line in lines if "plan:" in line)
        assert got == value or f"plan: {value}" in said or f"plan: effective batch {value}" in said, (key, got, value)


def test_few_steps_are_flagged():
    assert any("only 12 optimizer steps (fewer than 50)" in n
               for n in make_plan(PlanRequest(params="135M", examples=100)).notes)
    assert not any("fewer than 50" in n for n in make_plan(PlanRequest(params="135M", examples=1000)).notes)
