"""Joining a Ray cluster, and what every worker checks before it trusts a path (the staging folder, an input).

Every node must see the inputs, the tokenizer folder and --out-dir at the same paths (shared
storage): `Staging.check` and `check_input` name the node and the path it could not see. A worker's
SftpackError reaches the user through `run_dataset` as itself, without Ray's remote traceback.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sftpack.errors import SftpackError

CHECK_FILE = "shared-check"
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def connect(address: str) -> dict[str, Any]:
    """Join (or start, for `local`) the Ray cluster at `address`; return what the manifest records.

    Args:
        address: `local` (a Ray instance in this process's machine, all its CPUs), `auto` (the cluster
            `ray start` runs on this machine), `HOST:PORT` or `ray://HOST:PORT`.

    Raises:
        SftpackError: no cluster at `address`.
    """
    # Ray's C++ core logs warnings (e.g. how it found this host's address) straight to stderr;
    # failures still come back as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                  "runtime_env": {"env_vars": WORKER_ENV}}
        if address == "local":  # a private instance on loopback: it needs no network
            kwargs |= {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
            _joined_here.append(True)
        except Exception as err:  # ConnectionError, or Ray's own when no cluster answers
            raise SftpackError(f"--ray {address}: cannot connect to a Ray cluster there: {err}; start one with "
                               "`ray start --head` (README \"More than one machine\") or use --ray local") from None
    import ray.data

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("ray.data")]:
        logging.getLogger(name).setLevel(logging.WARNING)  # no INFO line per finished dataset
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, the driver's own (sftpack.progress)
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    return {"name": "ray", "address": address, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "cpus": int(resources.get("CPU", 0)), "ray_version": ray.__version__}


_joined_here: list[bool] = []  # non-empty while this process is in a cluster that `connect` joined


def leave() -> None:
    """Leave the cluster `connect` joined (a Ray session the caller started itself is left as it is).

    Leaving stops Ray's log subscriber: a late message from a node (a retried task, say) would
    otherwise print after a stage's last line, which make reads (`sftpack pack` and `mix` print
    their folder last).
    """
    import ray

    if _joined_here:
        _joined_here.clear()
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_dataset(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Iterate a Ray Data pipeline's rows; a worker's SftpackError comes back as one, its message
    without Ray's remote traceback, with its exit code."""
    try:
        yield from rows
    except Exception as err:  # Ray wraps a task's exception (RayTaskError, Ray Data's own)
        marker = "SftpackError: "
        cause: BaseException | None = err
        while cause is not None:
            text = str(cause)
            if isinstance(cause, SftpackError) or marker in text:
                message = text[text.rindex(marker) + len(marker):].strip() if marker in text else text
                raise SftpackError(message, exit_code=getattr(cause, "exit_code", 2)) from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        raise SftpackError(f"--ray: the cluster failed: {type(err).__name__}: {err}", exit_code=1) from None


def node_name() -> str:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return f"this machine ({socket.gethostname()})"
    try:
        return f"Ray node {ray.util.get_node_ip_address()} ({socket.gethostname()})"
    except Exception:
        return f"Ray node {socket.gethostname()}"


@dataclass(frozen=True)
class Staging:
    """A folder for a stage's task files inside its temp output, with a check file that proves a
    worker sees the driver's folder (on a cluster: the same shared storage at the same path)."""

    path: str
    token: str

    @classmethod
    def create(cls, folder: Path) -> "Staging":
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        (folder / CHECK_FILE).write_text(token, encoding="ascii")
        return cls(str(folder.resolve()), token)

    def file(self, name: str) -> Path:
        return Path(self.path) / name

    def check(self) -> None:
        """Raise unless this process sees the driver's staging folder (the same token in its check file).

        Raises:
            SftpackError: naming this node and the path, and the fix.
        """
        path = Path(self.path) / CHECK_FILE
        try:
            seen = path.read_text(encoding="ascii")
        except OSError:
            seen = None
        if seen != self.token:
            raise SftpackError(f"{node_name()} cannot see the output folder {Path(self.path).parent} "
                               f"({path} {'missing' if seen is None else 'is another folder'}): every node must "
                               "mount --out-dir at the same path (shared storage)", exit_code=2)


def check_input(path: str, size: int) -> None:
    """Raise unless `path` is there with the `size` the run was planned with."""
    try:
        actual = os.path.getsize(path)
    except OSError:
        actual = None
    if actual != size:
        raise SftpackError(f"{node_name()} cannot see the input {path} as the driver does "
                           f"({'missing' if actual is None else f'{actual} bytes, driver {size}'}): the input "
                           "changed during the run, or (on a cluster) this node does not see the inputs at the "
                           "same path (shared storage)", exit_code=2)


def atomic_path(path: Path) -> Path:
    """A temp name beside `path` for a staged file, renamed onto `path` once written."""
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


def wait_for_cluster(address: str, cpus: int, timeout_s: float = 60.0) -> None:
    """Block until the cluster at `address` shows `cpus` CPUs (tests and benchmarks start nodes first)."""
    import ray

    connect(address)
    deadline = time.time() + timeout_s
    while ray.cluster_resources().get("CPU", 0) < cpus:
        if time.time() > deadline:
            raise SftpackError(f"--ray {address}: {ray.cluster_resources().get('CPU', 0)} CPUs after "
                               f"{timeout_s:.0f}s, expected {cpus}")
        time.sleep(0.5)
