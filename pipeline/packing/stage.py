"""The pack stage: conversations -> packed Arrow shard folder named by fingerprint.

    inputs ──readers.open_input (any container and layout)──> input ranges (io.ranges), one task each
           ──steps.EncodeRanges on the executor's workers: validate's checks (schema, ROW_CHECKS,
             control tokens; a failing record is dropped as rejected_<rule>), then template, mask,
             tokenize in batches──> staged spill and stats parts (+ lengths back to the driver)
           ──best-fit-decreasing over lengths, on the driver──> bins
           ──steps.WriteParts: rows gathered from the spills (packing.rows)──> data-*.arrow, stats.parquet
           ──> manifest.json

Only lengths stay in memory for packing; token data goes to disk as it is produced. The
output folder `out_dir/<fingerprint>/` is built under a temp name and renamed when complete,
manifest last. Running again with the same inputs and options reuses it after checking every
shard's checksum; a corrupt folder is rebuilt.

Inputs are read as validate reads them (JSONL, .jsonl.gz/.zst, Parquet, a save_to_disk folder,
a cached dataset; messages, sharegpt or alpaca layout), and every record gets validate's checks
without the template one (encoding renders it anyway): pack never trusts its input, so a user
turn holding `<|im_end|>\n<|im_start|>assistant\n` is never packed as a real turn boundary. The
same data in any container or layout packs to the same input_ids and labels; the fingerprint
covers the input's bytes as stored plus how they were read (layout, column map, split).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftpack import __version__
from sftpack.store.atomic import atomic_dir, output_parent, write_json
from sftpack.errors import SftpackError
from sftpack.execution import Execution
from sftpack.execution.cluster import Staging
from sftpack.store.fingerprint import file_identity, fingerprint, sha256_file, tokenizer_files_identity, tokenizer_identity
from sftpack.io.readers import InputSource, ReadOptions
from sftpack.packing.options import PackConfig
from sftpack.records import reject_policy as refuse_rejects
from sftpack.templates.tokenizer import check_tokenizer_folder
from sftpack.store.packed_folder import MANIFEST, PackedFolder

if TYPE_CHECKING:
    import numpy as np

STAGING = ".staging"
"""The task files' folder inside the temp output: removed before the rename, and with it if the run dies."""
# Bump when the bytes pack writes for the same inputs and options change meaning.
PACK_FORMAT_VERSION = 3  # 2: rows from pack_bins (BFD + local search); 3: stop markers inferred, not guessed


def _is_plain(source: InputSource) -> bool:
    """A single messages JSONL file read as it is: identified and fingerprinted as pack always did."""
    return source.container == "jsonl" and source.verbatim


def input_identity(source: InputSource) -> dict[str, Any]:
    """What a manifest records for one input.

    Args:
        source: the opened input.

    Returns:
        fingerprint.file_identity of a plain messages JSONL file (what pack has always recorded),
        else `InputSource.identity()`: sha256 of the bytes as stored, lines or rows, container,
        layout, column map and split.
    """
    return file_identity(source.files[0]) if _is_plain(source) else source.identity()


def _fingerprint_input(source: InputSource, identity: dict[str, Any]) -> dict[str, Any]:
    # A plain JSONL file keeps its old entry, so folders packed before stay reused. Anything else
    # adds how it was read: the same bytes read with another layout, column map or split give
    # other records. The stem names examples without an id, so it stands in for the file name.
    if _is_plain(source):
        return {"name": source.files[0].name, "sha256": identity["sha256"]}
    reading = {key: identity.get(key) for key in ("container", "layout", "columns", "split")}
    return {"name": source.stem, "sha256": identity["sha256"]} | reading


def _open_sources(inputs: list[str | Path], read: ReadOptions) -> list[InputSource]:
    """Open every input (readers.open_input); collect every problem and raise once (exit 2)."""
    if not inputs:
        raise SftpackError("give at least one input")
    sources, problems = read.open_each(inputs)
    if problems:
        raise SftpackError("\n".join(problems))
    return sources


# ---------------------------------------------------------------- the stage

def _fingerprint_of(sources: list[InputSource], cfg: PackConfig) -> tuple[str, list[dict], dict[str, str]]:
    """The packed folder's fingerprint, the inputs' identities and the tokenizer files' hashes.

    Reuse is decided from file hashes alone: the tokenizer folder's files and the override
    template stand in for the loaded tokenizer, so a reused run loads neither transformers nor
    the template (the full tokenizer identity is still recorded in the manifest at build time).

    Raises:
        SftpackError: no tokenizer folder, or no template file where one is named.
    """
    tokenizer_path = check_tokenizer_folder(cfg.tokenizer)
    template_sha = None
    if cfg.chat_template:
        if not Path(cfg.chat_template).is_file():
            raise SftpackError(f"{cfg.chat_template}: chat template file not found")
        template_sha = sha256_file(cfg.chat_template)
    input_ids = [input_identity(source) for source in sources]
    tokenizer_files = tokenizer_files_identity(tokenizer_path)
    fp = fingerprint({
        "format": PACK_FORMAT_VERSION,
        "inputs": [_fingerprint_input(source, i) for source, i in zip(sources, input_ids)],
        "tokenizer_files": tokenizer_files,
        "options": cfg.output_options() | {"chat_template": template_sha},
    })
    return fp, input_ids, tokenizer_files


def run(inputs: list[str | Path], out_dir: str | Path, cfg: PackConfig, read: ReadOptions | None = None,
        execution: Execution | None = None) -> dict[str, Any]:
    """Pack `inputs` into `out_dir/<fingerprint>/`, or reuse that folder when sound.

    Args:
        inputs: files, folders, globs or dataset names in any layout (readers.open_input);
            usually the validate stage's output. Records validate would reject are dropped.
        out_dir: parent folder of packed folders.
        cfg: pack options.
        read: how inputs are read (layout, split, column map); auto-detected layout by default.
        execution: where the tasks run (workers here, or a Ray cluster); the output is the same.

    Returns:
        The manifest, with `path` (the packed folder) and `reused` added.

    Raises:
        SftpackError: missing or unreadable input, unusable tokenizer or template, nothing left to pack.
    """
    started = time.time()
    sources = _open_sources(list(inputs), read or ReadOptions())
    fp, input_ids, tokenizer_files = _fingerprint_of(sources, cfg)
    folder = output_parent(out_dir) / fp
    existing = PackedFolder.at(folder)
    if existing is not None:
        problems = existing.checksum_errors()  # bytes as pack wrote them; `sftpack verify` rechecks rows too
        if not problems:
            return reject_policy({**existing.manifest, "path": str(folder), "reused": True}, cfg)
        print(f"pack: {folder} failed verification, rebuilding: {problems[0]}", file=sys.stderr)

    tokenizer, renderer = cfg.load_renderer()
    identity = tokenizer_identity(tokenizer, renderer.template) | {"files_sha256": tokenizer_files,
                                                                   "stop_markers": renderer.stop.as_manifest()}
    try:
        manifest = _build(folder, sources, input_ids, identity, fp, cfg, started, tokenizer_files,
                          (tokenizer, renderer), execution or Execution())
    except OSError as err:  # disk full, file size limit, permissions: nothing is left behind
        raise SftpackError(f"{folder}: writing the packed folder failed: {err.strerror or err} "
                           f"({err.filename or 'shard data'}); free space or choose another --out-dir",
                           exit_code=1) from None
    return reject_policy({**manifest, "path": str(folder), "reused": False}, cfg)


def reject_policy(manifest: dict[str, Any], cfg: PackConfig) -> dict[str, Any]:
    """The manifest, unless records failed validate's checks and `cfg.allow_rejects` is off
    (records.reject_policy). The folder is written either way (rejects are not in the fingerprint),
    so a run with --allow-rejects afterwards reuses it."""
    dropped = manifest["totals"]["dropped"]
    rejected = {k.removeprefix("rejected_"): v for k, v in dropped.items() if k.startswith("rejected_")}
    first = [f"{d['input']}:{d['line']} [{d['rule']}] {d['message']}" for d in manifest["first_drops"]
             if d["reason"].startswith("rejected_")]
    refuse_rejects(cfg.allow_rejects, rejected, manifest["totals"]["examples_read"], "examples", first,
                   "`sftpack validate INPUT --out-dir DIR` writes every one to a rejects file with its line and rule",
                   "pack the rest")
    return manifest


def _build(folder: Path, sources: list[InputSource], input_ids: list[dict], identity: dict, fp: str,
           cfg: PackConfig, started: float, tokenizer_files: dict, loaded: tuple, execution: Execution) -> dict[str, Any]:
    """Encode, pack and write the folder under a temp name; rename it into place last."""
    from sftpack.packing.bins import one_per_row, pack_bins
    from sftpack.packing.steps import encode_all, write_all
    from sftpack.store.shards import write_dataset_metadata

    with atomic_dir(folder) as tmp, execution.executor() as executor:
        staging = Staging.create(tmp / STAGING)
        total_lines = sum(i.get("lines", i.get("rows", 0)) for i in input_ids)
        encoded = encode_all(executor, sources, cfg, staging, tokenizer_files, loaded, total_lines)
        lengths = encoded["lengths"]
        if lengths.size == 0:
            raise SftpackError(f"no example left to pack; drop reasons: {encoded['dropped'] or 'no input lines'}; "
                               f"first: {encoded['first'][:3]}")
        bins = pack_bins(lengths, cfg.max_length) if cfg.strategy == "bfd" else one_per_row(lengths)
        shards = write_all(executor, staging, tmp, bins, encoded, cfg)
        shutil.rmtree(staging.path)
        write_dataset_metadata(tmp, [s["file"] for s in shards], fp)
        manifest = {
            "fingerprint": fp,
            "sftpack_version": __version__,
            "pack_format": PACK_FORMAT_VERSION,
            "created_unix": int(time.time()),
            "inputs": input_ids,
            "tokenizer": identity,
            "options": dataclasses.asdict(cfg),
            "engine": executor.describe(),  # information only: not in the fingerprint, the output is the same
            "shards": shards,
            "totals": _totals(tmp, lengths, len(bins), shards, encoded["dropped"], encoded["audit"], cfg.max_length),
            "first_drops": encoded["first"],
            "seconds": round(time.time() - started, 3),
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _totals(folder: Path, lengths: np.ndarray, rows: int, shards: list[dict[str, Any]], dropped: dict[str, int],
            audit: dict[str, int], max_length: int) -> dict[str, Any]:
    """manifest totals: examples read and packed (from `folder`'s stats.parquet), drops, tokens, rows,
    how full they are against the capacity and the lower bound, and the audit counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sftpack.packing.bins import lower_bound_rows

    with pq.ParquetFile(folder / "stats.parquet") as stats_file:  # pq.read_table imports pandas
        stats = stats_file.read(columns=["truncated", "dropped"])
    tokens = int(lengths.sum())
    trained = sum(s["trained_tokens"] for s in shards)
    return {
        "examples_read": stats.num_rows,
        "examples_packed": int(pc.sum(pc.is_null(stats.column("dropped"))).as_py() or 0),
        "sequences_packed": int(lengths.size),
        "dropped": dict(sorted(dropped.items())),
        "truncated": int(pc.sum(stats.column("truncated")).as_py() or 0),
        "rows": rows,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": round(trained / tokens, 6),
        "capacity": rows * max_length,
        "packing_efficiency": round(tokens / (rows * max_length), 6),
        "lower_bound_rows": lower_bound_rows(tokens, max_length),
        "audit": audit,
    }


def summary(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What `sftpack pack` prints of a packed folder (built or reused): (lines for stdout, warnings),
    the folder's path last."""
    t = manifest["totals"]
    verb = "reused (checksums verified)" if manifest["reused"] else f"packed in {manifest['seconds']:.1f}s"
    over = f" over {manifest['options']['max_length']}"  # too_long=28 over 1024: the limit they were over
    dropped = ", ".join(f"{k}={v}{over if k == 'too_long' else ''}" for k, v in t["dropped"].items()) or "none"
    audit = t.get("audit", {})
    lines = [f"{verb}: {t['examples_packed']}/{t['examples_read']} examples -> {t['rows']} rows "
             f"(lower bound {t['lower_bound_rows']}), {t['tokens']:,} tokens, {t['trained_tokens']:,} trained "
             f"({t['trained_share']:.1%}), packing efficiency {t['packing_efficiency']:.2%}, truncated "
             f"{t['truncated']}, assistant text not trained {audit.get('assistant_text_not_trained', 0)}, dropped: {dropped}"]
    if audit.get("split_conversations"):
        lines.append(f"split: {audit['split_conversations']} conversations into {t['sequences_packed']} sequences in "
                     f"all, {audit['split_extra_tokens']:,} extra tokens (--turns auto: every turn trained as the model "
                     "writes it)")
    if audit.get("turns_marked_untrained"):
        lines.append(f"untrained: {audit['turns_marked_untrained']} assistant turns marked \"train\": false")
    warnings = pack_warnings(manifest) + drop_hints(manifest)
    rejected = sum(v for k, v in t["dropped"].items() if k.startswith("rejected_"))
    if rejected:  # pack never trains on what validate rejects (--allow-rejects got here); say where to look
        first = next((d for d in manifest["first_drops"] if d["reason"].startswith("rejected_")), None)
        where = f" (first: {first['input']}:{first['line']} [{first['rule']}] {first['message']})" if first else ""
        warnings.append(f"{rejected} examples failed validate's checks and were left out{where}; "
                        "`sftpack validate` lists them all")
    return lines + [manifest["path"]], warnings


def pack_warnings(manifest: dict[str, Any]) -> list[str]:
    """What a user must hear about a packed folder (built or reused): inferred stop markers, then
    the audit counts that need attention, one sentence each with its fix."""
    from sftpack.templates.stop_markers import inferred_warning

    stop = manifest.get("tokenizer", {}).get("stop_markers", {})
    inferred = inferred_warning(stop, manifest.get("options", {}).get("tokenizer", "the tokenizer folder"))
    return ([inferred] if inferred else []) + audit_warnings(manifest.get("totals", {}).get("audit", {}))


def audit_warnings(audit: dict[str, int]) -> list[str]:
    """One sentence per audit count that needs a user's attention, each with a fix."""
    fixes = {
        "assistant_text_not_trained": "assistant turns have text the template renders (content, reasoning or tool "
                                      "calls) outside every trained span, so it is never learnt; check the stop "
                                      "markers (--stop-tokens) and the template",
        "reasoning_not_rendered": "assistant turns carry reasoning the chat template does not render, so it is not "
                                  "trained; use a template that renders reasoning_content, or --reasoning drop to say so",
        "tool_calls_not_rendered": "assistant turns call tools the chat template does not render; they are left "
                                   "untrained; use a template that renders tool_calls (--chat-template)",
        "turns_rendered_differently": "assistant turns are trained as the full conversation renders them, not as the "
                                      "model writes them at inference (--turns whole); --turns auto splits them",
        "turns_without_stop": "trained turns end in no stop marker the tokenizer knows: the model may not learn "
                              "to stop; check the template's end-of-turn token",
        "sequences_without_stop": "sequences' last trained token is not a stop token: the model may not learn to "
                                  "stop; check the template's end-of-turn token",
        "spans_with_role_header": "trained spans hold a user or system role header: the template's turns cannot be "
                                  "told apart; check the template",
    }
    found = []
    for key, text in fixes.items():
        if audit.get(key):
            examples = audit.get(f"{key}_examples")
            found.append((f"{examples} examples: " if examples is not None else "") + f"{audit[key]} {text}")
    return found


HINT_SHARE = 0.01
"""A drop reason over this share of the examples read gets a hint (`drop_hints`)."""


def drop_hints(manifest: dict[str, Any]) -> list[str]:
    """One sentence per drop reason over HINT_SHARE of the examples read, each with what to do.

    Args:
        manifest: a pack manifest (its totals, options and first_drops).

    Returns:
        The hints, in the order of `totals.dropped`.
    """
    totals, max_length = manifest["totals"], manifest["options"]["max_length"]
    read = max(totals["examples_read"], 1)
    hints = []
    for reason, count in totals["dropped"].items():
        if count / read <= HINT_SHARE or reason.startswith("rejected_"):  # rejects: the reject policy says
            continue
        said = f"{count} of {totals['examples_read']} examples ({count / read:.1%}) dropped as {reason}"
        if reason == "too_long":
            longest = max((d.get("tokens", 0) for d in manifest["first_drops"] if d["reason"] == reason), default=0)
            seen = f" (up to {longest:,} tokens among the first listed)" if longest else ""
            hints.append(f"{said}: longer than max_length {max_length}{seen}; --truncation truncate keeps their "
                         f"first {max_length} tokens, or raise --max-length (data.max_length)")
        elif reason == "no_trained_tokens":
            hints.append(f"{said}: nothing left to train (no assistant turn, or --train-on last / truncation left "
                         "none); see first_drops in manifest.json")
        else:
            hints.append(f"{said}: see first_drops in manifest.json for the lines and messages")
    return hints
