"""The data a run trains on: packed folders, made from raw data on the way when needed.

    data.train / data.validation ──prepare_data──> packed folders (raw data goes through
                                                    validate + pack, reused by fingerprint;
                                                    rejects stop it unless data.allow_rejects)
    data.recipe ──mix──> train.jsonl, eval/<source>.jsonl ──validate + pack──> a train folder and
                                                    one eval folder per source
    packed folder + the model's tokenizer ──load_packed──> datasets.Dataset of TRAIN_COLUMNS
    batch of packed rows ──UnpackedCollator──> one sequence per batch row, padded, attention mask
                                               (the route of a model whose packed rows leak: isolation.py)
"""

from __future__ import annotations

import logging
from pathlib import Path

from dataclasses import dataclass
from typing import Any

import torch

from sftpack.config.run_config import RunConfig
from sftpack.errors import SftpackError
from sftpack.store.packed_folder import MANIFEST, PackedFolder
from sftpack.templates.masking import IGNORE_INDEX

logger = logging.getLogger("sftpack.train")

# Columns the collator reads; example_ids stay on disk (provenance only).
TRAIN_COLUMNS = ["input_ids", "labels", "seq_lengths"]


Validation = "Path | dict[str, Path] | None"
"""One packed eval folder, one per source of a recipe (evaluated separately), or none."""


def prepare_data(cfg: RunConfig) -> tuple[Path, Validation]:
    """Packed folders for `data.train` and `data.validation`: the one way into training.

    A packed folder is used as it is. Anything else (a file, a folder or glob of data, a cached
    dataset name; any layout validate reads, `data.format` naming it) goes through validate and
    pack into `data.out_dir` (`validated/`, `packed/`); pack reuses an existing folder with the
    same fingerprint, so a second run re-tokenizes nothing. One reject policy, `data.allow_rejects`:
    false (default, as `make validate`) stops on a rejected line naming the rejects file.

    With `data.recipe`, the recipe is mixed into `data.out_dir/mix` first (reused by fingerprint);
    its train.jsonl and each eval/<source>.jsonl then go the same way.

    Returns:
        (train folder, validation): validation is one folder, {source: folder} for a recipe, or None.

    Raises:
        SftpackError: data.train missing, an input that cannot be read, a folder left by a pack
            that did not finish, rejected lines without data.allow_rejects, no valid line at all.
    """
    data = cfg.data
    if data.recipe:
        return _recipe_data(cfg)
    if not data.train:
        raise SftpackError("data.train: not set; give a messages JSONL or a packed folder "
                           "(e.g. data.train=out/packed/<fingerprint>)")
    train = _packed_path("data.train", data.train, cfg)
    validation = _packed_path("data.validation", data.validation, cfg) if data.validation else None
    return train, validation


def _recipe_data(cfg: RunConfig) -> tuple[Path, dict[str, Path] | None]:
    """Mix `data.recipe`, then validate and pack its train.jsonl and every eval/<source>.jsonl.

    Raises:
        SftpackError: an invalid recipe; evaluation asked for (train.eval_strategy) with no eval split.
    """
    from sftpack.mixing import stage as mix

    manifest = mix.run(cfg.data.recipe, Path(cfg.data.out_dir) / "mix")
    folder = Path(manifest["path"])
    logger.info("data.recipe %s -> %s (%s)", cfg.data.recipe, folder, "reused" if manifest["reused"] else "mixed")
    train = _validate_and_pack("data.recipe", str(folder / "train.jsonl"), cfg)
    splits = sorted((folder / "eval").glob("*.jsonl")) if (folder / "eval").is_dir() else []
    if not splits and cfg.train.get("eval_strategy", "no") != "no":
        raise SftpackError(f"data.recipe {cfg.data.recipe}: no eval split to evaluate on; give the recipe an "
                           f"`eval: {{count: N}}` or set train.eval_strategy=no")
    evals = {path.stem: _validate_and_pack(f"data.recipe eval/{path.name}", str(path), cfg) for path in splits}
    return train, evals or None


def _packed_path(key: str, value: str, cfg: RunConfig) -> Path:
    """`value` itself when it is a packed folder, else what validate and pack make of it."""
    path = Path(value)
    if PackedFolder.holds_one(path):
        return path
    if path.is_dir() and (path / "stats.parquet").is_file():  # pack writes it; only a packed folder has one
        raise SftpackError(f"{key} {path}: a folder without {MANIFEST}; not a (complete) packed folder. "
                           f"Re-run `sftpack pack`, or give the raw data")
    return _validate_and_pack(key, value, cfg)


def _demo_data_hint(spec: str) -> str:
    """How to make the demo data when the demo config names it on a fresh checkout (it is generated)."""
    path = Path(spec)
    if path.exists() or path.parent.parts[-2:] != ("data", "demo"):
        return ""
    return (f"; the demo data is generated, not checked in: run `make demo-data` "
            f"(python data/generate_demo.py --out-dir {path.parent})")


def _validate_and_pack(key: str, spec: str, cfg: RunConfig) -> Path:
    """Raw data -> data.out_dir/validated/<name>.jsonl -> data.out_dir/packed/<fingerprint>/.

    Raises:
        SftpackError: unreadable input; rejected lines unless data.allow_rejects; no valid line.
    """
    from sftpack.config.data_options import execution as where
    from sftpack.io.readers import ReadOptions
    from sftpack.packing import stage as pack
    from sftpack.packing.options import PackConfig
    from sftpack.validation import stage as validate

    out = Path(cfg.data.out_dir)
    execution = where(cfg)  # validate and pack run where data.ray says, as the stages alone do
    try:
        checked = validate.run([spec], out / "validated", validate.ValidateConfig.from_run_config(cfg),
                               ReadOptions(cfg.data.format), execution=execution)
    except SftpackError as err:
        raise SftpackError(f"{key}: {err}{_demo_data_hint(spec)}", exit_code=err.exit_code) from None
    result = checked["files"][0]
    counts = result["counts"]
    rejects = out / "validated" / result["outputs"]["rejects"]["path"]
    if not counts["kept"]:
        raise SftpackError(f"{key} {spec}: no valid line (all {counts['read'] - counts['blank']} rejected); see "
                           f"{rejects}", exit_code=1)
    validate.reject_policy(checked, out / "validated", cfg.data.allow_rejects, f"train on the {counts['kept']} kept",
                           where=f"{key} {spec}")
    if counts["rejected"]:
        logger.warning("%s: %d of %d lines rejected (see %s); training on the %d kept (data.allow_rejects)", spec,
                       counts["rejected"], counts["read"], rejects, counts["kept"])
    kept = out / "validated" / result["outputs"]["kept"]["path"]
    manifest = pack.run([kept], out / "packed", PackConfig.from_run_config(cfg), execution=execution)
    logger.info("%s -> %s (%s)", spec, manifest["path"], "reused" if manifest.get("reused") else "packed")
    return Path(manifest["path"])


def load_packed(folder: Path, tokenizer, key: str):
    """Open a packed folder for training; check it was made with this model's tokenizer.

    Raises:
        SftpackError: vocabulary mismatch, or missing columns.
    """
    from sftpack.store.fingerprint import tokenizer_identity

    packed = PackedFolder.at(folder) or PackedFolder(Path(folder), {})
    problems = packed.verify()
    if problems:
        raise SftpackError(f"{key} {folder}: failed verification, refusing to train on it: {problems[0]}"
                           f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                           f"re-run `sftpack pack` to rebuild it")
    packed_vocab = packed.tokenizer.get("vocab_sha256")
    ours = tokenizer_identity(tokenizer, None)["vocab_sha256"]
    if packed_vocab and packed_vocab != ours:
        raise SftpackError(
            f"{key} {folder}: packed with tokenizer {packed.tokenizer.get('name_or_path')!r} whose "
            f"vocabulary differs from model.name_or_path's; re-pack with the model's tokenizer")
    ds = packed.dataset()
    missing = [c for c in TRAIN_COLUMNS if c not in ds.column_names]
    if missing:
        raise SftpackError(f"{key} {folder}: columns {missing} missing; not an sftpack packed folder")
    return ds.select_columns(TRAIN_COLUMNS)


def rows_holding(ds, examples: int) -> int:
    """How many leading rows of a packed dataset hold at least `examples` sequences (all if fewer)."""
    seen = row = 0
    for batch in ds.select_columns(["seq_lengths"]).iter(batch_size=1024):  # never the whole column
        for lengths in batch["seq_lengths"]:
            seen, row = seen + len(lengths), row + 1
            if seen >= examples:
                return row
    return len(ds)


@dataclass
class UnpackedCollator:
    """Packed rows -> one sequence per batch row, right-padded, with an attention mask.

    The same rows as the packed route (same steps, batches, epochs and DDP shards), split by
    `seq_lengths` without re-tokenizing. Labels are the packed labels of each sequence, with the
    first token -100 as TRL's padding-free collator sets it, so the trained tokens, their count
    (num_items_in_batch) and the token-weighted loss are those of the packed batch. For rows
    seq_lengths [[3, 2], [4]]:

        input_ids       attention_mask   labels
        [a a a p]       [1 1 1 0]        [- a a -]
        [b b p p]       [1 1 0 0]        [- b - -]
        [c c c c]       [1 1 1 1]        [- c c c]

    Right padding keeps every real token at positions 0..n-1 and ahead of the padding, so causal
    attention, convolutions and recurrent state never see another sequence or a pad token.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = []
        for row in rows:
            start = 0
            for length in row["seq_lengths"]:
                sequences.append((row["input_ids"][start:start + length], row["labels"][start:start + length]))
                start += length
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (ids, targets) in enumerate(sequences):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            labels[i, 1:len(ids)] = torch.tensor(targets[1:])
            attention_mask[i, :len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class PositionIdsCollator:
    """TRL's padding-free collator without the boundary kwargs (cu_seq_lens_*, max_length_*, seq_idx):
    for a model whose masks from position_ids keep rows apart but whose reference kernels refuse
    those kwargs."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        from sftpack.training.isolation import BOUNDARY_KEYS

        batch = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=True)(rows)
        return {k: v for k, v in batch.items() if k not in BOUNDARY_KEYS}


def unpacked_cost(ds, batch_rows: int) -> dict[str, int]:
    """What training `ds` unpacked costs: rows, sequences (the batch rows unpacked), the real tokens and
    the tokens padded batches of `batch_rows` packed rows compute (each padded to its longest sequence)."""
    rows = sequences = tokens = padded = 0
    group: list[list[int]] = []
    for batch in ds.select_columns(["seq_lengths"]).iter(batch_size=1024):
        for lengths in batch["seq_lengths"]:
            rows, sequences, tokens = rows + 1, sequences + len(lengths), tokens + sum(lengths)
            group.append(lengths)
            if len(group) == batch_rows:
                padded += sum(len(g) for g in group) * max(max(g) for g in group)
                group = []
    if group:
        padded += sum(len(g) for g in group) * max(max(g) for g in group)
    return {"rows": rows, "sequences": sequences, "tokens": tokens, "padded_tokens": padded}
