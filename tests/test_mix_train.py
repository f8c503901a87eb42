"""A mix recipe where pack and train take data: pack packs its train.jsonl; train evaluates every
eval/<source> split separately (eval_<source>_loss) and stops and selects on their overall eval_loss,
which is checked against TRL's own evaluation of all the splits together."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from sftpack import api as sftpack  # sftpack.report and sftpack.train are shadowed once their subpackages are imported
from conftest import chat_and_alpaca_recipe, wandb_history
from sftpack.config.run_config import build_config
from sftpack.errors import SftpackError


class KeepLogs(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    return chat_and_alpaca_recipe(tmp_path_factory.mktemp("mix-train"), per_source=40, eval_count=4)


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


def _recipe_config(recipe, tiny_model_dir, out, run: Path, **train) -> dict:
    return {"model": {"name_or_path": str(tiny_model_dir)},
            "data": {"recipe": str(recipe), "max_length": 256, "out_dir": str(out)},
            "train": {"output_dir": str(run), "per_device_train_batch_size": 1, "eval_strategy": "steps",
                      "eval_steps": 1, "learning_rate": 0.05, "disable_tqdm": True, "seed": 1, **train}}


def _early_stopping(values: list[float], patience: int) -> tuple[int | None, int]:
    """(the evaluation that stops training or None, the best one): EarlyStoppingCallback's rule,
    a stop after `patience` evaluations in a row without a new minimum."""
    best, waited = 0, 0
    for i, value in enumerate(values[1:], 1):
        best, waited = (i, 0) if value < values[best] else (best, waited + 1)
        if waited >= patience:
            return i, best
    return None, best


def _stock_losses(checkpoint: Path, validation: dict[str, dict], tokenizer) -> dict[str, float]:
    """TRL's SFTTrainer, as it comes, evaluating the model saved in `checkpoint` on each eval split
    and on all of them together, each in one batch: the loss per trained token."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    sets = {name: datasets.load_from_disk(folder["path"]).select_columns(["input_ids", "labels", "seq_lengths"])
            for name, folder in validation.items()}
    sets["all"] = datasets.concatenate_datasets(list(sets.values()))
    args = SFTConfig(output_dir=str(checkpoint.parent / "stock"), report_to=[], use_cpu=True, bf16=False,
                     per_device_eval_batch_size=len(sets["all"]), padding_free=True, max_length=None,
                     dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(checkpoint), args=args,
                         train_dataset=sets["all"], eval_dataset=sets, processing_class=tokenizer)
    metrics = trainer.evaluate()
    return {name: metrics[f"eval_{name}_loss"] for name in sets}


def test_train_with_a_recipe_stops_and_selects_on_the_overall_eval_loss(recipe, tiny_model_dir, smol_tokenizer, out,
                                                                        tmp_path):
    """Every eval/<source> split is evaluated and logged as eval_<source>_loss beside eval_loss, in
    the Trainer's log, TensorBoard's event file and W&B's run (offline). The losses are those a stock
    TRL evaluation gives on each split and on all of them together, in one batch, of the best
    checkpoint; the eval batch here holds one row, so a mean of batch means would differ. Early
    stopping and the best checkpoint follow eval_loss, with checkpoints saved: here neither
    source's loss alone would stop at the same step with the same best checkpoint."""
    run = tmp_path / "run"
    # lr 0.07: eval_loss stops improving after its 5th evaluation, while chat's loss peaks a step
    # earlier and alpaca's keeps falling (checked by a scan of lr 0.02-0.3 and patience 1-3)
    raw = _recipe_config(recipe, tiny_model_dir, out, run, max_steps=10, per_device_eval_batch_size=1, learning_rate=0.07,
                         save_strategy="steps", save_steps=1, save_only_model=True, load_best_model_at_end=True,
                         report_to=["tensorboard", "wandb"])
    raw["monitor"] = {"early_stopping_patience": 2}
    logs = KeepLogs()
    manifest = sftpack.train(build_config(raw), callbacks=[logs])
    evals = [log for log in logs.logs if "eval_loss" in log]
    assert all({"eval_chat_loss", "eval_alpaca_loss"} <= set(log) for log in evals)
    stop, best = _early_stopping([log["eval_loss"] for log in evals], patience=2)
    assert stop is not None, (f"no early stop in 10 steps (eval_loss {[round(log['eval_loss'], 4) for log in evals]}): "
                              f"the losses moved; pick another learning_rate")
    for source in ("eval_chat_loss", "eval_alpaca_loss"):  # the overall loss is what decides
        assert _early_stopping([log[source] for log in evals[: stop + 1]], patience=2) != (stop, best), source
    assert (manifest["status"], manifest["steps"]) == ("early_stopped", stop + 1) and len(evals) == stop + 1
    checkpoint = Path(manifest["best_checkpoint"])
    assert checkpoint == run / f"checkpoint-{best + 1}" and manifest["best_eval_loss"] == evals[best]["eval_loss"]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{k}" for k in range(1, stop + 2)]
    from safetensors.torch import load_file

    final, kept = load_file(run / "final" / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert final.keys() == kept.keys() and all(final[k].equal(kept[k]) for k in final)  # the best, loaded at end
    stock = _stock_losses(checkpoint, manifest["data"]["validation"], smol_tokenizer)
    assert evals[best]["eval_loss"] == pytest.approx(stock["all"], rel=1e-5)
    for name in ("chat", "alpaca"):
        assert evals[best][f"eval_{name}_loss"] == pytest.approx(stock[name], rel=1e-5)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    history = wandb_history(run)  # beside this run, whatever ran before in this process
    for key in ("eval_chat_loss", "eval_alpaca_loss", "eval_loss"):
        tag = "eval/" + key.removeprefix("eval_")
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([log[key] for log in evals]), tag
        assert history[tag] == pytest.approx([log[key] for log in evals]), tag


def test_metric_for_best_model_may_name_one_source(recipe, tiny_model_dir, out, tmp_path):
    raw = _recipe_config(recipe, tiny_model_dir, out, tmp_path / "run", max_steps=2, per_device_eval_batch_size=4,
                         save_strategy="no", metric_for_best_model="eval_chat_loss", greater_is_better=False,
                         report_to="none")
    logs = KeepLogs()
    manifest = sftpack.train(build_config(raw), callbacks=[logs])
    evals = [log for log in logs.logs if "eval_loss" in log]
    assert len(evals) == 2 and manifest["best_eval_loss"] == min(log["eval_chat_loss"] for log in evals)


def test_a_recipe_beside_data_train_is_refused(recipe, tiny_model_dir):
    with pytest.raises(SftpackError, match="data.recipe and data.train both given"):
        build_config({"model": {"name_or_path": str(tiny_model_dir)},
                      "data": {"recipe": str(recipe), "train": "x.jsonl"}, "train": {}})
