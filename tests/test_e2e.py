"""The DAG end to end: `make validate pack train` on tiny fixtures, then again: nothing rebuilt;
then a `train` edit re-runs train only and a `data` edit re-packs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import datasets
import yaml

from tests.conftest import REPO


def _make(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """make's run; with `log`, its stdout and stderr go to that file, as `make ... > log 2>&1` (CI) writes them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = ["make", "--no-print-directory", "-C", str(REPO), *args]
    if log is None:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    with open(log, "w") as sink:
        return subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_make_validate_pack_train_then_nothing_to_rebuild(tiny_model_dir, real_data, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text(encoding="utf-8").splitlines()
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
    log = tmp_path / "make.log"
    first = _make("validate", "pack", "train", *variables, log=log)
    text = log.read_text()
    assert first.returncode == 0, text[-6000:]
    # every stage's lines are in the log, the first ones too (pack's output is not written over them)
    assert "\0" not in text and text.index("sftpack validate") < text.index("sftpack pack") < text.index("train --config")
    assert all(f in text for f in ("kept 8,", "40/40 examples ->", "8/8 examples ->")), text[:6000]  # train validated above

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

    _edits_rebuild_only_what_reads_them(config, out, variables)


def _edits_rebuild_only_what_reads_them(config: Path, out: Path, variables: list[str]) -> None:
    """After a full build: a `train` edit puts train alone out of date, a `data` edit pack and train
    (`make -n` lists what would run; running it is the build above)."""
    # A training hyperparameter re-runs train only: validate and pack depend on the model and
    # data sections ($(OUT)/config/{model,data}.json), which keep their mtime when unchanged.
    upstream = [out / "config" / "model.json", out / "config" / "data.json",
                *(out / "validated" / f"{split}.validate.json" for split in ("train", "val")),
                *(out / "packed" / f"{split}.path" for split in ("train", "val"))]
    before = {path: path.stat().st_mtime_ns for path in upstream}
    _edit(config, "train", learning_rate=2e-3)
    retrain = _make("-n", "validate", "pack", "train", *variables)
    assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-3000:]
    assert "train --config" in retrain.stdout  # the recipe echoes `sftpack \` then `train --config ...`
    assert "sftpack validate" not in retrain.stdout and "sftpack pack" not in retrain.stdout
    assert {path: path.stat().st_mtime_ns for path in upstream} == before
    assert _make("-q", "validate", "pack", *variables).returncode == 0
    assert _make("-q", "train", *variables).returncode == 1

    # A data value re-packs both splits, and train is out of date again.
    _edit(config, "data", max_length=200)
    repack = _make("-n", "validate", "pack", *variables)
    assert repack.returncode == 0, repack.stdout[-3000:] + repack.stderr[-3000:]
    assert repack.stdout.count("sftpack pack") == 2, repack.stdout
    assert json.loads((out / "config" / "data.json").read_text())["max_length"] == 200
    assert _make("-q", "train", *variables).returncode == 1


def test_config_sections_are_rewritten_only_when_they_change(tmp_path):
    """What make sees: a section file keeps its mtime until its resolved content changes."""
    from sftpack.config.sections import write_sections

    config, sections = tmp_path / "run.yaml", tmp_path / "config"
    raw = {"model": {"name_or_path": "m"}, "data": {"max_length": 256}, "train": {"learning_rate": 1e-3}}
    config.write_text(yaml.safe_dump(raw))
    assert write_sections(config, sections) == [sections / "model.json", sections / "data.json"]
    mtimes = {path: path.stat().st_mtime_ns for path in sections.iterdir()}

    raw["train"]["learning_rate"] = 2e-3  # not a section validate or pack reads
    raw["data"]["packing"] = True  # the default, written out: the resolved section is the same
    config.write_text(yaml.safe_dump(raw))
    assert write_sections(config, sections) == []
    assert {path: path.stat().st_mtime_ns for path in sections.iterdir()} == mtimes

    raw["data"]["max_length"] = 128
    config.write_text(yaml.safe_dump(raw))
    assert write_sections(config, sections) == [sections / "data.json"]
    assert json.loads((sections / "data.json").read_text())["max_length"] == 128
    assert (sections / "model.json").stat().st_mtime_ns == mtimes[sections / "model.json"]


def _edit(config: Path, section: str, **values) -> None:
    raw = yaml.safe_load(config.read_text())
    raw[section].update(values)
    config.write_text(yaml.safe_dump(raw))
