"""Encoding on a Ray cluster: one actor per CPU, each with its own tokenizer, encodes whole byte
ranges with pack's own `encode_lines` into staged spill and stats files (pack on Ray, the driver's
side in pipeline/distributed/driver.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.distributed.cluster import atomic_path, check_input, check_shared, node_name
from sftpack.distributed.ranges import range_rows
from sftpack.errors import SftpackError


class Encoder:
    """One Ray Data actor: loads the tokenizer once, encodes whole ranges with `packing.encode.encode_lines`.

    `job` holds cfg (pack options, paths absolute), the staging folder and its check file's token
    (check_shared), the driver's tokenizer file hashes (a node whose folder differs is refused) and
    (layout, column map) per input source.
    """

    job: tuple = ()
    """(cfg, staging, token, tokenizer_files, readings): set on a subclass per run (RayPack.encode)."""

    def __init__(self):
        from sftpack.store.fingerprint import tokenizer_files_identity
        from sftpack.packing.encode import set_worker_state

        cfg, staging, token, tokenizer_files, readings = self.job
        check_shared(staging, token)
        try:
            files = tokenizer_files_identity(Path(cfg.tokenizer))
        except OSError:
            files = None
        if files != tokenizer_files:
            raise SftpackError(f"{node_name()}: the tokenizer folder {cfg.tokenizer} is missing or differs from the "
                               "driver's: every node must see the same tokenizer folder at the same path", exit_code=2)
        set_worker_state(cfg, *cfg.load_renderer())  # as pack.run does
        self.cfg, self.staging, self.token, self.readings = cfg, Path(staging), token, readings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {key: [] for key in ("range", "lines", "lengths", "trained", "summary")}
        for k in range(len(batch["range"])):
            spec = {key: batch[key][k].item() if hasattr(batch[key][k], "item") else batch[key][k] for key in batch}
            result = self._encode_range(spec)
            for key in out:
                out[key].append(result[key])
        return {key: np.array(values, dtype=object if key in ("lengths", "trained", "summary") else np.int64)
                for key, values in out.items()}

    def _encode_range(self, spec: dict[str, Any]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        from sftpack.packing.encode import AUDIT_TOTALS, SPILL_SCHEMA, STATS_SCHEMA, count_drops, encode_lines
        from sftpack.templates.masking import IGNORE_INDEX

        check_shared(str(self.staging), self.token)
        check_input(spec["path"], spec["size"])
        spill_path = self.staging / f"spill-{spec['range']:06d}.arrow"
        stats_path = self.staging / f"stats-{spec['range']:06d}.parquet"
        spill_tmp, stats_tmp = atomic_path(spill_path), atomic_path(stats_path)
        lengths, trained = [], []
        dropped: dict[str, int] = {}
        first: list[dict] = []
        audit = dict.fromkeys(AUDIT_TOTALS, 0)
        lines = 0
        rows = ((row.number, row.record, row.error) for row in range_rows(spec, *self.readings[spec["source"]]))
        try:
            with pa.OSFile(str(spill_tmp), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as spill, \
                    pq.ParquetWriter(str(stats_tmp), STATS_SCHEMA) as stats_writer:
                for batch in _chunks(rows, self.cfg.batch_size):
                    result = encode_lines((spec["label"], spec["stem"], batch))
                    spill.write_batch(result["spill"])
                    lengths.append(np.asarray(result["spill"].column("input_ids").value_lengths(), dtype=np.int32))
                    labels = result["spill"].column("labels")
                    flags = (np.asarray(labels.flatten()) != IGNORE_INDEX).astype(np.int32)
                    starts = np.asarray(labels.offsets)[:-1]
                    trained.append(np.add.reduceat(flags, starts) if flags.size else np.zeros(len(labels), np.int32))
                    for key, value in result["audit"].items():
                        audit[key] += value
                    count_drops(result["stats"], dropped, first)  # as pack's local run counts them
                    stats_writer.write_table(pa.Table.from_pylist(result["stats"], schema=STATS_SCHEMA))
                    lines += len(result["stats"])
            os.replace(spill_tmp, spill_path)
            os.replace(stats_tmp, stats_path)
        finally:
            spill_tmp.unlink(missing_ok=True)
            stats_tmp.unlink(missing_ok=True)
        cat = lambda parts: np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)  # noqa: E731
        return {"range": spec["range"], "lines": lines, "lengths": cat(lengths).tobytes(),
                "trained": cat(trained).tobytes(),
                "summary": json.dumps({"dropped": dropped, "first": first, "audit": audit})}


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
