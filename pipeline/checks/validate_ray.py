"""Validate on a Ray cluster (`sftpack validate --ray ADDRESS`): the same output files as the local run.

    driver                                       workers (Ray Data)
    inputs -> ranges (distributed/ranges.py)  -> count newlines                   (tasks)
                                               -> check_row on every row of a range (actor pool:
                                                  one tokenizer each when --tokenizer is given)
                                                  -> staging/kept-R, rejects-R
           <- per range: counts, first warnings and rejects, (8-byte hash, line) per kept row
    duplicates, in input order (as the local run)
                                               -> per input: concatenate the parts into x.jsonl and
                                                  x.rejects.jsonl, sha256 on the way  (tasks)
    x.validate.json last (pipeline/checks/validate.py's manifest)

Kept lines, rejects and the manifest's counts, warnings and digests are those of the local run; the
staging area is an `.incomplete-<pid>-...` folder under --out-dir that the next run removes if this
one dies.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import dataclasses

import numpy as np

from sftpack.store.atomic import INCOMPLETE_PREFIX, remove_stale, write_json
from sftpack.distributed.cluster import (
    CHECK_FILE,
    atomic_path,
    check_input,
    check_shared,
    cluster_cpus,
    connect,
    leave,
    run_dataset,
)
from sftpack.distributed.ranges import numbered_ranges, range_rows
from sftpack.errors import SftpackError


class Checker:
    """One Ray Data actor: validate's row checks (with the tokenizer's when given) over whole ranges."""

    job: tuple = ()
    """(cfg, staging, token, readings, verbatim per source): set on a subclass per run."""

    def __init__(self):
        from sftpack.checks.messages import ROW_CHECKS, tokenizer_checks
        from sftpack.checks.validate import load_renderer

        cfg, staging, token, self.readings, self.verbatim = self.job
        check_shared(staging, token)
        self.checks = list(ROW_CHECKS) + (tokenizer_checks(*load_renderer(cfg)) if cfg.tokenizer else [])
        self.cfg, self.staging, self.token = cfg, Path(staging), token

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for k in range(len(batch["range"])):
            spec = {key: batch[key][k].item() if hasattr(batch[key][k], "item") else batch[key][k] for key in batch}
            results.append(self._check_range(spec))
        return {"range": np.array([r[0] for r in results], dtype=np.int64),
                "summary": np.array([r[1] for r in results], dtype=object),
                "keys": np.array([r[2] for r in results], dtype=object)}

    def _check_range(self, spec: dict[str, Any]) -> tuple[int, str, bytes]:
        from collections import Counter

        from sftpack.checks.conversation_key import conversation_hash
        from sftpack.checks.validate import _Tally, _where, check_row

        check_shared(str(self.staging), self.token)
        check_input(spec["path"], spec["size"])
        verbatim = self.verbatim[spec["source"]]
        tally = _Tally(self.cfg, verbatim)  # counts, first warnings and rejects of this range alone
        keys, lines = [], []
        kept_path = self.staging / f"kept-{spec['range']:06d}"
        rejects_path = self.staging / f"rejects-{spec['range']:06d}"
        kept_tmp, rejects_tmp = atomic_path(kept_path), atomic_path(rejects_path)
        read, has_raw = 0, True
        try:
            with open(kept_tmp, "wb") as kept, open(rejects_tmp, "wb") as rejects:
                for row in range_rows(spec, *self.readings[spec["source"]], blanks=True):
                    read += len(row.raw) if row.raw is not None else 1
                    has_raw = row.raw is not None
                    tally.counts["read"] += 1
                    if row.blank:
                        tally.counts["blank"] += 1
                        tally.warnings.add("blank", **_where(row, verbatim))
                        continue
                    out, errors = check_row(row, verbatim, self.checks, self.cfg.max_errors_per_line)
                    if errors:
                        rejects.write(tally.reject(row, errors))
                        continue
                    kept.write(out)
                    tally.counts["kept"] += 1
                    keys.append(conversation_hash(row.record))
                    lines.append(row.number)
                    for i, message in enumerate(row.record["messages"]):  # as _Tally.keep, without duplicates
                        if len(message["content"]) > self.cfg.max_turn_chars:
                            tally.warnings.add("long_turn", **_where(row, verbatim), path=f"/messages/{i}/content",
                                               chars=len(message["content"]))
            os.replace(kept_tmp, kept_path)
            os.replace(rejects_tmp, rejects_path)
        finally:
            kept_tmp.unlink(missing_ok=True)
            rejects_tmp.unlink(missing_ok=True)
        summary = {"counts": dict(Counter(tally.counts)), "warnings": tally.warnings.first,
                   "warning_counts": dict(tally.warnings.counts), "first_rejects": tally.first_rejects,
                   "progress": read, "file": spec["label"], "raw": has_raw}
        pairs = np.array([keys, lines], dtype=np.int64).T.copy() if keys else np.zeros((0, 2), np.int64)
        return spec["range"], json.dumps(summary, default=str), pairs.tobytes()


def _concatenate(spec: dict[str, Any]) -> dict[str, Any]:
    """One output file from its ranges' parts, in order; its sha256."""
    import hashlib

    staging = Path(spec["staging"])
    check_shared(str(staging), spec["token"])
    target = Path(spec["target"])
    tmp = atomic_path(target)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for k in json.loads(spec["ranges"]):
                with open(staging / f"{spec['kind']}-{k:06d}", "rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"target": spec["target"], "sha256": digest.hexdigest()}


class _Digest:
    def __init__(self, hexdigest: str):
        self._hex = hexdigest

    def hexdigest(self) -> str:
        return self._hex


def run(inputs: list[str | Path], out_dir: str | Path, cfg: Any, read: Any, address: str) -> dict[str, Any]:
    """`sftpack.checks.validate.run` on the Ray cluster at `address`: the same files, the same result.

    Raises:
        SftpackError: as sftpack.checks.validate.run; a node that cannot see --out-dir or an input, by name.
    """
    from sftpack.store.fingerprint import tokenizer_identity
    from sftpack.io.readers import ReadOptions
    from sftpack.checks.validate import MANIFEST_SUFFIX, REJECTS_SUFFIX, _manifest, _open_inputs, load_renderer

    started = time.perf_counter()
    out = Path(out_dir).resolve()
    if not inputs:
        raise SftpackError("give at least one input", exit_code=2)
    sources = _open_inputs([str(p) for p in inputs], out, read or ReadOptions())
    tokenizer_info, worker_cfg = None, cfg
    if cfg.tokenizer:
        tokenizer, renderer = load_renderer(cfg)
        tokenizer_info = tokenizer_identity(tokenizer, renderer.template)
        worker_cfg = dataclasses.replace(cfg, tokenizer=str(Path(cfg.tokenizer).resolve()),  # paths the nodes see
                                         chat_template=cfg.chat_template and str(Path(cfg.chat_template).resolve()))
    remove_stale(out)
    connect(address)
    staging = Path(tempfile.mkdtemp(prefix=f"{INCOMPLETE_PREFIX}{os.getpid()}-validate.", dir=out))
    token = secrets.token_hex(16)
    (staging / CHECK_FILE).write_text(token, encoding="ascii")
    try:
        identities = [source.identity() for source in sources]
        for source in sources:
            (out / f"{source.stem}{MANIFEST_SUFFIX}").unlink(missing_ok=True)  # old outputs now look incomplete
        cpus = cluster_cpus()
        ranges = numbered_ranges(sources, cpus)
        job = (worker_cfg, str(staging), token, [(s.layout, s.columns) for s in sources], [s.verbatim for s in sources])
        results = _check_ranges(ranges, job, cpus, sum(i["bytes"] for i in identities))
        by_source: dict[int, list[int]] = {}
        for spec in ranges:
            by_source.setdefault(spec["source"], []).append(spec["range"])
        digests = _concatenate_parts(sources, by_source, staging, token, out)
        files = []
        for s, source in enumerate(sources):
            tally = _merge(cfg, source, [results[k] for k in by_source.get(s, [])])
            kept_path, rejects_path = out / f"{source.stem}.jsonl", out / f"{source.stem}{REJECTS_SUFFIX}"
            tally.digests = {"kept": _Digest(digests[str(kept_path)]), "rejects": _Digest(digests[str(rejects_path)])}
            manifest = _manifest(identities[s], kept_path, rejects_path, tally, cfg, tokenizer_info, started)
            write_json(out / f"{source.stem}{MANIFEST_SUFFIX}", manifest)
            files.append(manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        leave()
    totals = {k: sum(m["counts"][k] for m in files) for k in ("read", "kept", "rejected", "blank")}
    return {"files": files, "totals": totals}


def _check_ranges(ranges: list[dict[str, Any]], job: tuple, cpus: int,
                  total_bytes: int) -> dict[int, tuple[dict, np.ndarray]]:
    """Check every range on a pool of Checker actors; per range, its summary and (hash, line) keys."""
    import ray.data

    from sftpack.progress import progress_bar

    results: dict[int, tuple[dict, np.ndarray]] = {}
    bar = progress_bar(total_bytes, "validate (ray)", unit="B")
    try:
        if ranges:
            checked = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
                type("Checker", (Checker,), {"job": job}), batch_size=1, num_cpus=1,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus))
            for row in run_dataset(checked.iter_rows()):
                summary = json.loads(row["summary"])
                results[int(row["range"])] = (summary, np.frombuffer(row["keys"], dtype=np.int64).reshape(-1, 2))
                bar.update(summary["progress"])
    finally:
        bar.close()
    return results


def _concatenate_parts(sources: list[Any], by_source: dict[int, list[int]], staging: Path, token: str,
                       out: Path) -> dict[str, str]:
    """Every input's kept lines and rejects from the staged parts into out/<stem>.jsonl and
    out/<stem>.rejects.jsonl (one task each); sha256 by target path."""
    import ray.data

    from sftpack.checks.validate import REJECTS_SUFFIX

    parts = []
    for s, source in enumerate(sources):
        for kind, suffix in (("kept", ".jsonl"), ("rejects", REJECTS_SUFFIX)):
            parts.append({"staging": str(staging), "token": token, "kind": kind,
                          "ranges": json.dumps(by_source.get(s, [])), "target": str(out / f"{source.stem}{suffix}")})
    return {row["target"]: row["sha256"] for row in run_dataset(
        ray.data.from_items(parts, override_num_blocks=len(parts)).map(_concatenate).iter_rows())}

def _merge(cfg: Any, source: Any, parts: list[tuple[dict, np.ndarray]]) -> Any:
    """One input's _Tally from its ranges' summaries, in order; duplicates found here, as locally."""
    from sftpack.checks.validate import _Tally

    tally = _Tally(cfg, source.verbatim)
    first_seen: dict[int, Any] = {}
    for summary, pairs in parts:
        tally.counts.update(summary["counts"])
        for kind, entries in summary["warnings"].items():
            if kind == "duplicate":
                continue
            tally.warnings.counts[kind] += summary["warning_counts"].get(kind, 0)
            room = tally.warnings.examples - len(tally.warnings.first[kind])
            tally.warnings.first[kind] += entries[:max(0, room)]
        room = cfg.examples - len(tally.first_rejects)
        tally.first_rejects += summary["first_rejects"][:max(0, room)]
        for key, line in pairs.tolist():
            where = {"line": line} if source.verbatim else {"input": summary["file"], "row": line}
            if key in first_seen:
                tally.warnings.add("duplicate", **where, repeats=first_seen[key])
            elif source.verbatim:
                first_seen[key] = line
            else:  # readers.Row.where()
                first_seen[key] = f"{summary['file']}:{line}"
    return tally
