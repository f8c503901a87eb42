"""The packed row format: Arrow shard files that `datasets.load_from_disk` opens, and their checks
(reading a packed folder is pipeline/store/packed_folder.py's).

A packed folder holds `data-XXXXX-of-YYYYY.arrow` (Arrow IPC streams, the format
`save_to_disk` writes), `state.json` and `dataset_info.json` (what `load_from_disk` reads),
`stats.parquet` and `manifest.json` (written last). Row columns:

    input_ids    list<int32>   the packed token ids
    labels       list<int32>   the id where trained, -100 elsewhere (not shifted)
    seq_lengths  list<int32>   lengths of the packed sequences; sum == len(input_ids)
    example_ids  list<string>  the source example of each sequence
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.store.arrays import as_numpy
from sftpack.store.atomic import write_json
from sftpack.store.fingerprint import sha256_file
from sftpack.templates.masking import IGNORE_INDEX
from sftpack.store.manifest import MANIFEST, read_manifest, shard_checksum_error

ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("seq_lengths", pa.list_(pa.int32())),
        ("example_ids", pa.list_(pa.string())),
    ]
)


def shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def write_shard(path: Path, batches: Iterator[pa.RecordBatch]) -> str:
    """Write record batches as one Arrow IPC stream; return the file's sha256."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ROW_SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sha256_file(path)


def row_features() -> dict[str, Any]:
    """`datasets.Features.from_arrow_schema(ROW_SCHEMA).to_dict()`, without importing datasets
    (~0.3 s of every pack; tests/test_pack.py keeps the two equal)."""
    return {field.name: {"feature": {"dtype": str(field.type.value_type), "_type": "Value"}, "_type": "List"}
            for field in ROW_SCHEMA}


def write_dataset_metadata(folder: Path, shard_files: list[str], fingerprint: str) -> None:
    """The two small files `datasets.load_from_disk` needs beside the shards."""
    write_json(folder / "dataset_info.json", {
        "citation": "", "description": "sftpack packed rows", "homepage": "", "license": "",
        "features": row_features(),
    })
    write_json(folder / "state.json", {
        "_data_files": [{"filename": name} for name in shard_files],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    })


def read_shard(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def row_invariant_errors(table: pa.Table, max_length: int) -> list[str]:
    """Packed-row invariants, vectorised over a shard; an empty list means sound.

    Checks: labels and input_ids have equal lengths; seq_lengths sum to the row length and
    are positive; no row exceeds max_length; every label is -100 or its own token id;
    each sequence has one example id.
    """
    errors = []
    ids, labels = table.column("input_ids").combine_chunks(), table.column("labels").combine_chunks()
    seqs, examples = table.column("seq_lengths").combine_chunks(), table.column("example_ids").combine_chunks()
    row_len = as_numpy(ids.value_lengths()).astype(np.int64)
    bad = np.flatnonzero(row_len != as_numpy(labels.value_lengths()))
    if bad.size:
        errors.append(f"labels length != input_ids length in rows {bad[:5].tolist()}")
    bad = np.flatnonzero(row_len > max_length)
    if bad.size:
        errors.append(f"rows longer than max_length {max_length}: {bad[:5].tolist()}")
    seq_values = as_numpy(seqs.flatten()).astype(np.int64)
    if seq_values.size and seq_values.min() < 1:
        errors.append("seq_lengths holds a length below 1")
    seq_offsets = as_numpy(seqs.offsets).astype(np.int64)
    seq_sums = np.add.reduceat(seq_values, seq_offsets[:-1]) if seq_values.size else np.zeros(0)
    seq_sums[seq_offsets[:-1] == seq_offsets[1:]] = 0  # reduceat quirk on empty lists
    bad = np.flatnonzero(seq_sums != row_len)
    if bad.size:
        errors.append(f"seq_lengths do not sum to the row length in rows {bad[:5].tolist()}")
    bad = np.flatnonzero(as_numpy(seqs.value_lengths()) != as_numpy(examples.value_lengths()))
    if bad.size:
        errors.append(f"example_ids and seq_lengths differ in count in rows {bad[:5].tolist()}")
    if not errors:
        flat_ids = as_numpy(ids.flatten())
        flat_labels = as_numpy(labels.flatten())
        wrong = (flat_labels != IGNORE_INDEX) & (flat_labels != flat_ids)
        if wrong.any():
            rows = np.searchsorted(as_numpy(ids.offsets)[1:], np.flatnonzero(wrong)[:5], side="right")
            errors.append(f"labels neither -100 nor the token id in rows {sorted(set(rows.tolist()))}")
    return errors


def verify_folder(folder: str | Path) -> list[str]:
    """Re-check a packed folder against its manifest; return the failures (empty: sound).

    Each failure names the shard and the check: missing manifest, missing shard, sha256
    mismatch, row/token/trained-token counts, row invariants.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder}: no readable {MANIFEST} (incomplete or not a packed folder)"]
    errors = []
    max_length = int(manifest["options"]["max_length"])
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        problem = shard_checksum_error(path, shard)
        if problem:
            errors.append(problem)
            continue
        try:
            table = read_shard(path)
        except (pa.ArrowInvalid, OSError) as err:
            errors.append(f"{path}: unreadable Arrow stream: {err}")
            continue
        tokens = int(as_numpy(table.column("input_ids").combine_chunks().value_lengths()).sum())
        labels = as_numpy(table.column("labels").combine_chunks().flatten())
        counts = {"rows": table.num_rows, "tokens": tokens, "trained_tokens": int((labels != IGNORE_INDEX).sum())}
        for key, actual in counts.items():
            if actual != shard[key]:
                errors.append(f"{path}: {key} {actual} != manifest {shard[key]}")
        errors += [f"{path}: {message}" for message in row_invariant_errors(table, max_length)]
    return errors
