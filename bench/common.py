"""Shared pieces of the benchmarks: inputs made from the real datasets, whole-process timing
with peak memory of the process tree, medians, machine and version facts.

Inputs are never copied into the repository: `make_inputs` repeats the real files into
bench/work/ (git-ignored) at run time, giving every repeat its own id.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
REAL = ROOT / "tests" / "data" / "real"  # the real datasets, gzipped in the repo (NOTICE there)
REAL_FILES = ("alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo")
MODEL = ROOT / "models" / "smollm2-135m-instruct"
PY = sys.executable
SFTPACK = str(Path(sys.executable).parent / "sftpack")

# Every measured process gets the same environment: offline, single-threaded tokenizers (as
# `make` sets it; --num-proc is the only parallelism), no progress bars, no trackers.
BENCH_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "WANDB_MODE": "disabled",
    "PYTHONHASHSEED": "0",
}


def bench_env() -> dict[str, str]:
    return {**os.environ, **BENCH_ENV}


def real_lines(stem: str) -> list[str]:
    """The lines of one real dataset (tests/data/real/<stem>.jsonl.gz)."""
    return gzip.decompress((REAL / f"{stem}.jsonl.gz").read_bytes()).decode("utf-8").splitlines()


def make_inputs(name: str, repeats: int, lines_per_file: int | None = None) -> Path:
    """bench/work/<name>.jsonl: the three real files (first `lines_per_file` lines of each, or
    all) repeated `repeats` times; repeat r > 0 gets ids '<id>~r<r>'. Returns the path."""
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{name}.jsonl"
    sources = []
    for stem in REAL_FILES:
        lines = [line for line in real_lines(stem) if line.strip()]
        sources.append(lines[:lines_per_file] if lines_per_file else lines)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for r in range(repeats):
            for lines in sources:
                for line in lines:
                    if r:
                        record = json.loads(line)
                        record["id"] = f"{record.get('id')}~r{r}"
                        line = json.dumps(record, ensure_ascii=False)
                    handle.write(line + "\n")
    tmp.replace(out)
    return out


@dataclass
class Run:
    """One whole process: wall seconds, peak RSS of its process tree (MiB), its output."""

    cmd: list[str]
    wall_s: float
    peak_rss_mib: float
    rc: int
    stdout: str
    stderr: str
    load_before: float
    load_after: float
    cpu_s: float = 0.0
    """User + system CPU seconds of the process and every descendant it waited for."""
    extra: dict = field(default_factory=dict)

    def json_tail(self) -> dict:
        """The last stdout line parsed as JSON (the bench scripts print one)."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise ValueError(f"no JSON line in the output of {' '.join(self.cmd)}")


def run_measured(cmd: list[str], poll_s: float = 0.02, check: bool = True, timeout: float = 1800) -> Run:
    """Run `cmd` as a whole process; poll the RSS summed over it and all its descendants
    (pool workers included) every `poll_s` seconds and keep the peak."""
    load_before = os.getloadavg()[0]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # one measured process at a time
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            stop.wait(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        poller.join()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    run = Run(cmd, wall, peak / 2**20, proc.returncode, out, err, load_before, os.getloadavg()[0], cpu)
    if check and proc.returncode != 0:
        raise SystemExit(f"bench: command failed (rc {proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return run


def median(values) -> float:
    return statistics.median(list(values))


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("sftpack", "torch", "transformers", "trl", "datasets", "tokenizers", "pyarrow", "numpy", "jinja2")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            found[name] = "missing"
    try:
        found["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True).stdout.strip()
    except OSError:
        found["git"] = "?"
    return found


def short(cmd: list[str]) -> str:
    """A command as a reader would type it (paths relative to the repository root)."""
    parts = []
    for part in cmd:
        part = part.replace(str(ROOT) + "/", "").replace(PY, ".venv/bin/python")
        parts.append(part)
    return " ".join(parts)
