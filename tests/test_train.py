"""train: sequence isolation in packed rows, SFTConfig contract, real tiny-model runs on CPU
(trackers, checkpoints, best model, resume, NaN stop, early stopping, health rules); 2 processes: test_fsdp.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback, TrainerControl, TrainerState
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from conftest import wandb_history

from sftpack.config.run_config import ModelConfig, MonitorConfig, build_config
from sftpack.errors import SftpackError
from sftpack.training.monitoring import HealthCallback
from sftpack.training.stage import FINAL_DIR, RUN_CONFIG, RUN_MANIFEST, run
from sftpack.training.args import sft_config
from sftpack.training.runtime import Runtime, resolve_runtime
from sftpack.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
CPU = Runtime(device="cpu", dtype="float32", attn_implementation="sdpa", reason="test")

# The monitored run: every key must reach both TensorBoard and W&B.
TRACKED = ["train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
           "train/trained_tokens_per_second", "train/memory_rss_mb", "eval/loss", "eval/train_gap",
           "eval/overfitting", "train/summary_steps", "train/summary_best_eval_loss", "train/summary_epochs"]


def make_config(model_dir, packed, out, validation=True, monitor=None, **train):
    """A tiny-model run config: 12 steps of one packed row each, eval and save every 3."""
    settings = {
        "output_dir": str(out), "max_steps": 12, "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1,
        "eval_strategy": "steps" if validation else "no", "eval_steps": 3, "save_strategy": "steps",
        "save_steps": 3, "save_total_limit": 2, "load_best_model_at_end": validation,
        "report_to": "none", "seed": 7, "data_seed": 7, "disable_tqdm": True,
    }
    settings.update(train)
    data = {"train": str(packed[0]), "validation": str(packed[1]) if validation else None, "max_length": 256}
    raw = {"model": {"name_or_path": str(model_dir)}, "data": data, "train": settings}
    if monitor:
        raw["monitor"] = monitor
    return build_config(raw)


# ---------------------------------------------------------------- packed rows isolate sequences

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_logits_equal_each_sequence_alone(tiny_model_dir, packed_chat, attn):
    """Through TRL's padding-free collator (the trainer's exact inputs), every token's logits in
    a packed batch equal those of its sequence run alone: no attention across sequences."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    rows = datasets.load_from_disk(str(packed_chat[0])).select(range(2))
    rows = [{k: row[k] for k in ("input_ids", "labels", "seq_lengths")} for row in rows]
    assert sum(len(r["seq_lengths"]) for r in rows) >= 4
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" not in batch
    labels = batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
        ids = batch["input_ids"][0]
        start = 0
        for row in rows:
            for length in row["seq_lengths"]:
                alone = model(input_ids=ids[None, start:start + length], use_cache=False).logits[0]
                torch.testing.assert_close(packed[start:start + length], alone, atol=2e-5, rtol=1e-4)
                assert labels[0, start] == -100  # nothing is predicted across a boundary
                start += length
        assert start == ids.numel()
        # The check can fail: one causal sequence over the whole row changes later sequences.
        leaky = model(input_ids=ids[None], use_cache=False).logits[0]
        second = rows[0]["seq_lengths"][0]
        assert not torch.allclose(leaky[second:second + 5], packed[second:second + 5], atol=1e-3)


def test_packed_loss_equals_token_weighted_mean_of_sequences(tiny_model_dir, packed_chat):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    row = datasets.load_from_disk(str(packed_chat[0]))[0]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{k: row[k] for k in ("input_ids", "labels", "seq_lengths")}])
    with torch.no_grad():
        packed_loss = model(**batch, use_cache=False).loss
        total, count, start = 0.0, 0, 0
        for length in row["seq_lengths"]:
            ids = torch.tensor(row["input_ids"][start:start + length])[None]
            labels = torch.tensor(row["labels"][start:start + length])[None]
            targets = int((labels[0, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels, use_cache=False).loss.item() * targets
            count += targets
            start += length
    assert packed_loss.item() == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------- runtime and SFTConfig contract

def test_auto_runtime_on_cpu_is_float32_sdpa_and_says_why():
    runtime = resolve_runtime(ModelConfig())
    assert (runtime.device, runtime.dtype, runtime.attn_implementation) == ("cpu", "float32", "sdpa")
    assert "CPU" in runtime.reason and "no CUDA GPU" in runtime.reason
    with pytest.raises(SftpackError, match="flash-attn is not installed"):
        resolve_runtime(ModelConfig(attn_implementation="flash_attention_2"))


def test_sft_config_contract(tiny_model_dir, packed_chat, tmp_path):
    cfg = make_config(tiny_model_dir, packed_chat, tmp_path, gradient_checkpointing=True,
                      resume_from_checkpoint="last")
    args, resume = sft_config(cfg, CPU)
    assert args.padding_free and not args.packing and args.max_length is None
    assert args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert args.bf16 is False  # TRL would turn bf16 on, even on CPU
    assert args.activation_checkpointing and args.gradient_checkpointing  # old name mirrors the new
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert resume is True
    assert sft_config(make_config(tiny_model_dir, packed_chat, tmp_path), CPU)[0].activation_checkpointing is False


def test_conflicting_settings_are_named_together(tiny_model_dir, packed_chat, tmp_path):
    with pytest.raises(SftpackError) as err:  # config loading: early stopping without the best model
        make_config(tiny_model_dir, packed_chat, tmp_path, validation=False,
                    monitor={"early_stopping_patience": 2}, eval_strategy="steps")
    assert "monitor.early_stopping_patience needs train.load_best_model_at_end" in str(err.value)
    cfg = make_config(tiny_model_dir, packed_chat, tmp_path, validation=False, eval_strategy="steps")
    with pytest.raises(SftpackError) as err:  # the run: nothing to evaluate on
        sft_config(cfg, CPU)
    message = str(err.value)
    assert "train.eval_strategy" in message and "data.validation" in message


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "data": {"train": "y"},
                                      "train": {"output_dir": str(tmp_path), "max_step": 3}}))
    assert cli(["train", "--config", str(config)]) == 2
    assert "max_steps" in capsys.readouterr().err  # close match offered


# ---------------------------------------------------------------- the monitored run

def _tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.glob("runs/*/events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


ON_MONITORED_RUN_WORKER = pytest.mark.xdist_group("monitored-run")  # its users on one worker: it trains once


@pytest.fixture(scope="module")
def monitored_run(tiny_model_dir, packed_chat, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "monitored"
    cfg = make_config(tiny_model_dir, packed_chat, out, report_to=["tensorboard", "wandb"], run_name="t")
    env_before = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_NAME")}
    os.environ.pop("WANDB_MODE", None)  # W&B must go offline by itself: no API key here
    os.environ.pop("WANDB_DIR", None)
    try:
        assert not os.environ.get("WANDB_API_KEY")
        manifest = run(cfg)
        env_after = {k: os.environ.get(k) for k in env_before}
    finally:
        for key, value in env_before.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    return out, manifest, env_after


@ON_MONITORED_RUN_WORKER
def test_metrics_reach_tensorboard_and_wandb(monitored_run):
    out, manifest, env_after = monitored_run
    assert list(out.glob("wandb/offline-run-*"))  # offline by itself, beside the run
    assert env_after == {"WANDB_MODE": None, "WANDB_DIR": None, "WANDB_NAME": None}  # for that run only
    scalars = _tensorboard_scalars(out)
    history = wandb_history(out)
    for key in TRACKED:
        assert key in scalars, f"{key} missing in TensorBoard"
        assert key in history, f"{key} missing in W&B"
    assert len(scalars["train/loss"]) == 12 and len(scalars["eval/loss"]) == 4
    assert all(v > 0 for v in scalars["train/trained_tokens_per_second"])
    assert scalars["train/summary_best_eval_loss"] == [pytest.approx(min(scalars["eval/loss"]))]
    assert history["eval/loss"] == pytest.approx(scalars["eval/loss"])
    assert manifest["tokens"]["trained"] < manifest["tokens"]["total"]


@ON_MONITORED_RUN_WORKER
def test_checkpoints_rotate_best_model_is_final(monitored_run):
    out, manifest, _ = monitored_run
    assert manifest["status"] == "completed" and manifest["steps"] == 12
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(checkpoints) == 2 and "checkpoint-12" in checkpoints  # save_total_limit 2 of 4 saves
    best = Path(manifest["best_checkpoint"])
    assert best.name in checkpoints
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert manifest["best_eval_loss"] == pytest.approx(min(evals))
    final = load_file(out / FINAL_DIR / "model.safetensors")
    for name, tensor in load_file(best / "model.safetensors").items():
        torch.testing.assert_close(final[name], tensor)
    assert (out / FINAL_DIR / "tokenizer.json").is_file()
    saved = yaml.safe_load((out / RUN_CONFIG).read_text())
    assert saved["train"]["max_steps"] == 12 and saved["model"]["name_or_path"]
    written = json.loads((out / RUN_MANIFEST).read_text())
    assert written["data"]["train"]["fingerprint"] and written["runtime"]["dtype"] == "float32"


# ---------------------------------------------------------------- resume, NaN stop, early stopping

@ON_MONITORED_RUN_WORKER
def test_sigkill_between_checkpoints_then_resume_reaches_the_same_step_and_weights(tiny_model_dir, packed_chat,
                                                                                   tmp_path, monitored_run):
    """`sftpack train` SIGKILLed between checkpoints (a save it was writing may be left half done, which
    resume skips), then resumed: the run reaches the uninterrupted run's step, best eval loss and
    weights, so seeds, data order and optimizer state were restored. The resume runs in this process
    (a second interpreter would only import torch again)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_config(tiny_model_dir, packed_chat, out).to_dict()))
    log = tmp_path / "train.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "sftpack", "train", "--config", str(config)],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sink, stderr=sink)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint-6" / "trainer_state.json").exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / FINAL_DIR).exists()
    manifest = run(make_config(tiny_model_dir, packed_chat, out, resume_from_checkpoint="last"))
    assert int(Path(manifest["resumed_from"]).name.split("-")[1]) >= 6
    assert manifest["steps"] == 12 and manifest["status"] == "completed"
    reference = monitored_run[0]
    assert manifest["best_eval_loss"] == pytest.approx(monitored_run[1]["best_eval_loss"], rel=1e-4)
    ours = load_file(out / "checkpoint-12" / "model.safetensors")
    for name, tensor in load_file(reference / "checkpoint-12" / "model.safetensors").items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-4, rtol=1e-3)


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_model_dir, packed_chat, tmp_path):
    with pytest.raises(SftpackError, match="no checkpoint-"):
        run(make_config(tiny_model_dir, packed_chat, tmp_path / "fresh", resume_from_checkpoint="last"))


class InfFromStep(TrainerCallback):
    """From `step` on, the embeddings output inf (a real forward hook on the real model)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1:
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * math.inf)


def test_nonfinite_loss_stops_saves_and_says_so(tiny_model_dir, packed_chat, tmp_path):
    out = tmp_path / "nan"
    manifest = run(make_config(tiny_model_dir, packed_chat, out, validation=False,
                               report_to="tensorboard"), callbacks=[InfFromStep(5)])
    assert manifest["status"] == "stopped_nonfinite" and manifest["steps"] == 5
    assert manifest["final"] is None and not (out / FINAL_DIR).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # no NaN checkpoint
    saved = load_file(out / "nonfinite-step-5" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())  # the weights before the bad update
    (warning,) = [w for w in manifest["health_warnings"] if w["kind"] == "nonfinite_loss"]
    assert "training stopped" in warning["message"] and "nonfinite-step-5" in warning["message"]
    scalars = _tensorboard_scalars(out)
    assert scalars["train/health_nonfinite_loss"] == [1.0]


def test_early_stopping_on_eval_loss(tiny_model_dir, packed_chat, tmp_path):
    # learning_rate 0: eval loss never improves, so patience 1 stops at the second evaluation.
    manifest = run(make_config(tiny_model_dir, packed_chat, tmp_path / "early", learning_rate=0.0,
                               eval_steps=2, save_steps=2, max_steps=40,
                               monitor={"early_stopping_patience": 1}))
    assert manifest["status"] == "early_stopped" and manifest["steps"] == 4
    assert (tmp_path / "early" / FINAL_DIR / "model.safetensors").is_file()


# ---------------------------------------------------------------- health rules

def _feed(health, logs_per_step, args=None):
    state, control = TrainerState(), TrainerControl()
    seen = []
    for step, logs in enumerate(logs_per_step, 1):
        state.global_step = step
        logs = dict(logs)
        health.on_log(args, state, control, logs=logs)
        seen.append(logs)
    return seen


def test_health_rules_warn_in_logs_with_advice():
    health = HealthCallback(cfg=MonitorConfig(grad_norm_high=10, grad_norm_low=1e-6, loss_spike_factor=2,
                                              throughput_drop_factor=0.5))
    logs = _feed(health, [
        {"loss": 2.0, "grad_norm": 1.0, "tokens_per_second": 1000, "memory_rss_mb": 100},
        {"loss": 1.9, "grad_norm": 1.0, "tokens_per_second": 1000, "memory_rss_mb": 101},
        {"loss": 1.8, "grad_norm": 1.0, "tokens_per_second": 1000, "memory_rss_mb": 102},
        {"loss": 9.0, "grad_norm": 50.0, "tokens_per_second": 300, "memory_rss_mb": 110},   # spike, high, drop
        {"loss": 1.7, "grad_norm": 1e-9, "tokens_per_second": 1000, "memory_rss_mb": 120},  # low
        {"eval_loss": 1.5},
        {"loss": 1.5, "grad_norm": 1.0, "tokens_per_second": 1000, "memory_rss_mb": 130},  # memory: 5 rises
        {"eval_loss": 1.8},                                                                 # eval rising
    ])
    kinds = [w.kind for w in health.warnings]
    assert kinds == ["loss_spike", "grad_norm_high", "throughput_drop", "grad_norm_low", "memory_growth",
                     "eval_rising"]
    # the log dict holds short codes; the full texts are the warnings (logged each on its own line)
    assert logs[3]["health_loss_spike"] == 1.0 and logs[3]["health_warning"] == "loss_spike, grad_norm_high, throughput_drop"
    messages = {w.kind: w.message for w in health.warnings}
    assert "grad norm 50" in messages["grad_norm_high"]
    assert "reduce the learning rate 2-3x" in messages["eval_rising"] and "weight_decay" in messages["eval_rising"]
    assert logs[7]["health_warning"] == "eval_rising" and "health_warning" not in logs[0]


@pytest.mark.parametrize("max_grad_norm,advice", [(1.0, "before clipping (max_grad_norm 1.0"), (0.0, "set max_grad_norm")])
def test_grad_norm_warning_knows_about_clipping(tmp_path, max_grad_norm, advice):
    from transformers import TrainingArguments

    health = HealthCallback(cfg=MonitorConfig(grad_norm_high=10))
    args = TrainingArguments(output_dir=str(tmp_path), max_grad_norm=max_grad_norm, report_to="none")
    _feed(health, [{"loss": 2.0, "grad_norm": 10.19}], args)
    [warning] = health.warnings
    assert warning.kind == "grad_norm_high" and advice in warning.message
    assert ("set max_grad_norm" in warning.message) == (max_grad_norm == 0.0)


# ---------------------------------------------------------------- reasoning data, split by the template

def test_split_reasoning_data_trains(tiny_model_dir, tmp_path):
    """Multi-turn reasoning data under Qwen3's real template: every conversation is split into one
    sequence per turn (Qwen3 strips earlier reasoning), and a model with the default tokenizer
    trains on it."""
    from sftpack.packing.stage import PackConfig
    from sftpack.packing.stage import run as pack

    lines = []
    for k in range(12):
        lines.append({"id": f"r{k}", "messages": [
            {"role": "user", "content": f"What is {k} plus {k}?"},
            {"role": "assistant", "content": f"{2 * k}.", "reasoning_content": f"{k} and {k} make {2 * k}."},
            {"role": "user", "content": "And doubled?"},
            {"role": "assistant", "content": f"<think>\nTwice {2 * k} is {4 * k}.\n</think>\n\n{4 * k}."}]})
    data = tmp_path / "reasoning.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    template = REPO / "tests" / "fixtures" / "templates" / "real" / "qwen3.jinja"
    packed = pack([data], tmp_path / "packed", PackConfig(tokenizer=str(tiny_model_dir), max_length=256,
                                                          chat_template=str(template)))
    audit = packed["totals"]["audit"]
    assert audit["split_conversations"] == 12 and packed["totals"]["sequences_packed"] == 24
    assert audit["sequences_without_stop"] == 0 and audit["spans_with_role_header"] == 0
    cfg = make_config(tiny_model_dir, (packed["path"], None), tmp_path / "run", validation=False, max_steps=3,
                      save_strategy="no", learning_rate=1e-4)
    result = run(cfg)
    assert result["status"] == "completed" and result["steps"] == 3
