"""Atomic writes: write beside the target, fsync, rename into place.

A reader (or the next run) sees either the old complete output or the new complete one,
never a half-written file or folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sftpack.errors import SftpackError

INCOMPLETE_PREFIX = ".incomplete-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    # The owner's pid is in the name, so cleanup never touches a live run's temp output.
    return f"{INCOMPLETE_PREFIX}{os.getpid()}-{path.name}."


def _owner_alive(name: str) -> bool:
    try:
        pid = int(name[len(INCOMPLETE_PREFIX):].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet (a zombie) still answers kill 0
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it to `path`.

    On an exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on clean exit fsync and rename it to `path`.

    An existing `path` is replaced. On an exception the temp folder is removed. A folder
    left behind by a killed process keeps the `.incomplete-` prefix, so nothing mistakes it
    for finished output; `remove_stale` clears such leftovers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def output_parent(parent: str | os.PathLike) -> Path:
    """`parent` created if missing and cleared of killed runs' leftovers: where a stage builds
    its `<fingerprint>/` folder.

    Raises:
        SftpackError: the folder cannot be created (exit 2).
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SftpackError(f"{parent}: cannot create the output folder ({err.strerror}); choose another --out-dir",
                           exit_code=2) from None
    remove_stale(parent)
    return parent


def remove_stale(parent: str | os.PathLike) -> list[Path]:
    """Delete `.incomplete-*` leftovers of killed runs under `parent`, saying so in one line on
    stderr; return what was removed.

    Leftovers of processes still running (a parallel `make -j` job) are kept.
    """
    parent = Path(parent)
    removed = []
    if parent.is_dir():
        for child in parent.glob(f"{INCOMPLETE_PREFIX}*"):
            if _owner_alive(child.name):
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    if removed:
        pids = sorted({name.split("-", 2)[1] for name in (p.name for p in removed)})
        print(f"sftpack: removed {len(removed)} unfinished output{'s' if len(removed) > 1 else ''} of runs that ended "
              f"(process {', '.join(pids)}) from {parent}: {', '.join(sorted(p.name for p in removed))}", file=sys.stderr)
    return removed
