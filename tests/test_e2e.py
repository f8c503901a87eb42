"""The DAG end to end: `make validate pack train` on tiny fixtures, then again: nothing rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import datasets
import yaml

from tests.conftest import REPO


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_make_validate_pack_train_then_nothing_to_rebuild(tiny_model_dir, shared_data, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    lines = (shared_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    (data / "val.jsonl").write_text("\n".join(lines[40:48]) + "\nnot json\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"max_length": 256},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2,
                  "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no", "logging_steps": 1,
                  "report_to": "none", "learning_rate": 1e-3, "seed": 1, "disable_tqdm": True},
    }))
    variables = [f"CONFIG={config}", f"DATA={data}", f"OUT={out}"]

    first = _make("validate", "pack", "train", *variables)
    assert first.returncode != 0 and "rejected 1" in first.stderr + first.stdout  # validate stops on a bad line
    (data / "val.jsonl").write_text("\n".join(lines[40:48]) + "\n", encoding="utf-8")
    first = _make("validate", "pack", "train", *variables)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for split, count in (("train", 40), ("val", 8)):
        manifest = json.loads((out / "validated" / f"{split}.validate.json").read_text())
        assert manifest["counts"]["kept"] == count and manifest["counts"]["rejected"] == 0
        folder = Path((out / "packed" / f"{split}.path").read_text().strip())
        packed = json.loads((folder / "manifest.json").read_text())
        assert packed["totals"]["examples_read"] == count
        assert len(datasets.load_from_disk(str(folder))) == packed["totals"]["rows"]
    run = json.loads((out / "runs" / "tiny" / "sftpack_run.json").read_text())
    assert run["status"] == "completed" and run["steps"] == 2 and run["best_eval_loss"] is None
    assert (out / "runs" / "tiny" / "final" / "model.safetensors").is_file()

    again = _make("validate", "pack", "train", *variables)
    assert again.returncode == 0
    assert "sftpack" not in again.stdout, again.stdout  # no stage ran again
    assert _make("-q", "validate", "pack", "train", *variables).returncode == 0  # make agrees: up to date
