"""The benchmark harness runs end to end in its tiny mode and writes RESULTS-style output.

Uses the real datasets in tests/data/real/ and the default model's tokenizer; TRL's preparation, the --num-proc 2 runs and training are left
out to stay well under a minute (`make bench` runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run_all import SECTIONS  # noqa: E402


def test_quick_bench_writes_every_section(tmp_path, model_dir):
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--skip", "trl", "np2", "train",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in text, f"{section!r} missing from the results"
    assert "Quick mode" in text
    assert "sftpack pack bench/work/x2.jsonl" in text  # the exact commands are recorded
    assert "| a one-line change rebuilds | rebuilt | **met** |" in text
    assert "reused, checksums verified" in text
    assert "nproc:" in text and "trl 1.16.0" in text
