"""pack under faults: SIGKILL at any moment, a file-size limit (disk full), bad paths.

Whatever happens, the out dir holds either nothing that looks finished or a folder that
verifies; the next run cleans up and produces a sound folder.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftpack.store.atomic import INCOMPLETE_PREFIX
from sftpack.store.shards import verify_folder

SFTPACK = [sys.executable, "-m", "sftpack"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _pack_cmd(inputs, out_dir, model_dir, *extra):
    return [*SFTPACK, "pack", *map(str, inputs), "--out-dir", str(out_dir), "--tokenizer", str(model_dir),
            "--max-length", "512", *extra]


def _finished(out_dir: Path) -> list[Path]:
    return [p for p in out_dir.iterdir() if not p.name.startswith(INCOMPLETE_PREFIX)] if out_dir.exists() else []


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def inputs(real_data):
    return [real_data / "alpaca_en_demo.jsonl", real_data / "fastchat_dummy_conversation.jsonl"]


@pytest.mark.parametrize("moment", ["temp folder created", "spill written", "shards written"])
def test_sigkill_leaves_nothing_that_looks_finished(inputs, model_dir, tmp_path, moment):
    out = tmp_path / "packed"

    def temp_dirs():
        return [p for p in out.glob(f"{INCOMPLETE_PREFIX}*") if p.is_dir()] if out.exists() else []

    probes = {
        "temp folder created": lambda: bool(temp_dirs()),
        "spill written": lambda: any(list(d.glob(".staging/spill-*.arrow")) for d in temp_dirs()),
        "shards written": lambda: any(list(d.glob("data-*.arrow")) for d in temp_dirs()),
    }
    proc = subprocess.Popen(_pack_cmd(inputs, out, model_dir), env=ENV, cwd=Path(__file__).parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reached = _wait_for(probes[moment])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _finished(out) == [] or all(verify_folder(p) == [] for p in _finished(out)), "half-written output"
    assert reached or moment == "shards written", f"pack ended before {moment}"  # that window is milliseconds
    if reached:
        assert temp_dirs(), "the killed run's temp folder should be left, clearly marked incomplete"
    again = subprocess.run(_pack_cmd(inputs, out, model_dir), env=ENV, capture_output=True, text=True,
                           cwd=Path(__file__).parents[2])
    assert again.returncode == 0, again.stderr
    folder = Path(again.stdout.strip().splitlines()[-1])
    assert verify_folder(folder) == []
    assert temp_dirs() == []  # the dead run's leftovers were cleaned up
    assert _finished(out) == [folder]


def test_disk_full_fails_cleanly(inputs, model_dir, tmp_path):
    out = tmp_path / "packed"
    limit = 400_000  # bytes per file: the spill outgrows it

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(_pack_cmd(inputs, out, model_dir), env=ENV, capture_output=True, text=True,
                            preexec_fn=cap_file_size, cwd=Path(__file__).parents[2])
    assert result.returncode == 1
    assert "writing the packed folder failed" in result.stderr and "File too large" in result.stderr
    assert "Traceback" not in result.stderr
    assert _finished(out) == [] and list(out.iterdir()) == []


@pytest.mark.parametrize("case, expected", [
    ("missing input", "input file not found"),
    ("unwritable out dir", "cannot create the output folder"),
    ("tokenizer without chat template", "has no chat template"),
    ("missing tokenizer", "tokenizer folder not found"),
    ("max length below template overhead", "no example left to pack"),
])
def test_bad_paths_and_options_give_one_clear_message(inputs, model_dir, smol_tokenizer, tmp_path, case, expected):
    out, tokenizer, extra, data = tmp_path / "packed", model_dir, [], inputs[:1]
    if case == "missing input":
        data = [tmp_path / "nope.jsonl"]
    elif case == "unwritable out dir":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "packed"
    elif case == "tokenizer without chat template":
        tokenizer = tmp_path / "tok"
        smol_tokenizer.save_pretrained(tokenizer)
        (tokenizer / "chat_template.jinja").unlink()
    elif case == "missing tokenizer":
        tokenizer = tmp_path / "nothing-here"
    elif case == "max length below template overhead":
        extra = ["--max-length", "16"]
    cmd = _pack_cmd(data, out, tokenizer, *extra)
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
