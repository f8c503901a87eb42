"""A mix recipe where pack and train take data: pack packs its train.jsonl; train evaluates every
eval/<source> split separately (eval_<source>_loss) and selects on their overall eval_loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from sftpack import api as sftpack  # sftpack.report and sftpack.train are shadowed once their subpackages are imported
from conftest import read_real, wandb_history
from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError


class KeepLogs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mix-train")
    sources = []
    for name, real in (("chat", "fastchat_dummy_conversation"), ("alpaca", "alpaca_en_demo")):
        records = [r for r in read_real(real) if len(json.dumps(r)) < 900][:40]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        sources.append({"name": name, "path": str(folder / f"{name}.jsonl")})
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, "eval": {"count": 4}, "seed": 3}))
    return path


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One data.out_dir for both tests: train reuses the mix and the train folder pack made."""
    return tmp_path_factory.mktemp("mix-train-out")


def test_pack_takes_a_recipe_or_a_mix_folder(recipe, model_dir, out):
    folder = sftpack.pack([recipe], out / "packed", tokenizer=str(model_dir), max_length=256)
    mixed = sftpack.mix(recipe, out / "mix")  # pack mixed into out_dir's sibling mix/: reused here
    assert mixed["reused"] and folder.manifest["totals"]["examples_read"] == mixed["totals"]["out"]
    again = sftpack.pack([mixed["path"]], out / "packed", tokenizer=str(model_dir), max_length=256)
    assert again.reused and again.path == folder.path


@pytest.mark.parametrize("metric", ["eval_loss", "eval_chat_loss"])
def test_train_with_a_recipe_logs_eval_loss_per_source(recipe, tiny_model_dir, out, tmp_path, monkeypatch, metric):
    """Every eval/<source> split is evaluated and logged as eval_<source>_loss beside their
    token-weighted eval_loss, in the Trainer's log, TensorBoard's event file and W&B's run (offline);
    the best checkpoint follows eval_loss unless metric_for_best_model names one source."""
    report_to = ["tensorboard", "wandb"] if metric == "eval_loss" else "none"
    raw = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"recipe": str(recipe), "max_length": 256, "out_dir": str(out)},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 1,
                     "per_device_eval_batch_size": 4, "eval_strategy": "steps", "eval_steps": 1,
                     "save_strategy": "no", "metric_for_best_model": metric, "greater_is_better": False,
                     "learning_rate": 0.05, "report_to": report_to, "disable_tqdm": True, "seed": 1}}
    logs = KeepLogs()
    manifest = sftpack.train(build_config(raw), callbacks=[logs])
    evals = [log for log in logs.logs if "eval_loss" in log]
    assert len(evals) == 2
    weights = {name: folder["totals"]["trained_tokens"] for name, folder in manifest["data"]["validation"].items()}
    for log in evals:
        assert {"eval_chat_loss", "eval_alpaca_loss"} <= set(log)
        overall = sum(log[f"eval_{name}_loss"] * n for name, n in weights.items()) / sum(weights.values())
        assert log["eval_loss"] == pytest.approx(overall)
    assert manifest["best_eval_loss"] == pytest.approx(min(log[metric] for log in evals))
    if report_to == "none":
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    history = wandb_history(tmp_path / "run")  # beside this run, whatever ran before in this process
    for key in ("eval_chat_loss", "eval_alpaca_loss", "eval_loss"):
        tag = "eval/" + key.removeprefix("eval_")
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([log[key] for log in evals]), tag
        assert history[tag] == pytest.approx([log[key] for log in evals]), tag


def test_a_recipe_beside_data_train_is_refused(recipe, tiny_model_dir):
    with pytest.raises(SftpackError, match="data.recipe and data.train both given"):
        build_config({"model": {"name_or_path": str(tiny_model_dir)},
                      "data": {"recipe": str(recipe), "train": "x.jsonl"}, "train": {}})
