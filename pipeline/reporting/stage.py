"""The report stage: a dataset QA report (one self-contained HTML file + report.json), no training.

Raw conversations (any container and layout validate reads: pipeline/io/readers.py, streamed in batches):

    x.jsonl --readers, messages.first_reject (the validate checks)--> rejects: counted per rule, lines kept
            --encode_batch (template, mask, tokenize; batched)--> template errors join the rejects
            --conversation_facts + token counts--> examples table (polars, one row per valid example)
            --summaries, findings (kinds.py), verdict--> report.json
            --samples (encode_batch + inspect.token_pieces), plots--> report.html (both written atomically)

A packed folder (`out/packed/<fingerprint>/`): its stats.parquet is the examples table and the
rows' lengths give the fill of each row.

Definitions used throughout (and in report.json):
  - turns: messages in the conversation (system and tool messages included);
  - exact duplicate: messages and tools equal to an earlier valid example's (canonical JSON);
  - similar prompt: the first user message, lowercased with runs of punctuation and whitespace
    collapsed to one space, equals an earlier example's, and the conversation is not an exact
    duplicate;
  - prompt tokens: tokens not trained (tokens - trained); response tokens: trained tokens;
  - script: the Unicode script with the most letters over all message contents;
  - source: the record's `source` field, else the name of the input file it came from.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from sftpack import __version__
from sftpack.store.atomic import atomic_file, write_json
from sftpack.errors import SftpackError
from sftpack.packing.stage import input_identity
from sftpack.packing.bins import pack_bins
from sftpack.io.readers import DATA_SUFFIXES, InputSource, ReadOptions
from sftpack.reporting.findings import describe_jsonl, describe_packed, kept_lengths
from sftpack.reporting.html import render_html
from sftpack.reporting.kinds import MASK_KINDS, finding, mask_message, verdict
from sftpack.reporting.plots import make_plots
from sftpack.reporting.samples import packed_views, sample_views, samples_json
from sftpack.reporting.scan import ReportConfig, _Encoder, scan_jsonl
from sftpack.store.packed_folder import MANIFEST, PackedFolder
from sftpack.templates.masking import AUDIT_KEYS

# ---------------------------------------------------------------- the stage

def _open_inputs(inputs: list[str | Path], out: Path, read: ReadOptions) -> tuple[Path | None, list[InputSource]]:
    """Open the inputs, collecting every usage problem and raising once (exit 2).

    Returns:
        (the packed folder, []) for one packed folder, else (None, the inputs opened with `read`).
    """
    problems, sources, specs = [], [], [str(p) for p in inputs]
    if not specs:
        problems.append("give at least one input (JSONL, Parquet, a folder, a glob or a dataset name) or one "
                        "packed folder")
    packed = [Path(spec) for spec in specs if PackedFolder.holds_one(spec)]
    if packed and len(specs) > 1:
        problems.append("give one packed folder, or data inputs, not both or several packed folders")
    for spec in specs if not packed else []:
        if spec.endswith(DATA_SUFFIXES) and not Path(spec).exists() and not any(ch in spec for ch in "*?["):
            problems.append(f"{spec}: input not found")  # a file name: never looked up as a dataset name
            continue
        try:
            sources.append(read.open(spec))
        except SftpackError as err:
            folder = f"{spec}: not a packed folder (no {MANIFEST} inside); " if Path(spec).is_dir() else ""
            problems.append(folder + str(err))
    if out.suffix.lower() != ".html":
        problems.append(f"--out {out}: expected an .html path (report.json is written beside it)")
    if problems:
        raise SftpackError("\n  ".join(problems), exit_code=2)
    return (packed[0] if packed else None), sources


def run(inputs: list[str | Path], out: str | Path, cfg: ReportConfig,
        read: ReadOptions | None = None) -> dict[str, Any]:
    """Write the QA report of raw conversations or of one packed folder.

    Args:
        inputs: files, folders, globs or dataset names in any layout (readers.open_input), or
            one packed folder (`manifest.json` inside).
        out: the HTML path; the same numbers go to `<out without .html>.json` beside it.
        cfg: the options. For a packed folder, max_length comes from its manifest.
        read: how raw inputs are read (layout, split, column map); auto-detected layout by default.

    Returns:
        What report.json holds (plus `html` and `json`: the paths written).

    Raises:
        SftpackError: (exit 2) missing inputs, a folder that is not packed, mixed inputs, an
            unusable tokenizer or template; a table failing its pandera schema.
    """
    started = time.perf_counter()
    out = Path(out)
    folder, sources = _open_inputs(list(inputs), out, read or ReadOptions())
    if folder is not None:
        report, provenance, plots, samples, mask_audit, cfg = _packed_report(folder, cfg)
    else:
        report, provenance, plots, samples, mask_audit = _conversations_report(sources, cfg)
    if mask_audit is not None:
        report["mask_audit"] = mask_audit
    report = {"stage": "report", "version": __version__, **provenance, "options": dataclasses.asdict(cfg)} | report
    report |= {"verdict": verdict(report["findings"]), "samples": samples_json(samples)}
    report["seconds"] = round(time.perf_counter() - started, 3)
    json_path = out.with_suffix(".json")
    write_json(json_path, report)
    page = render_html(report | {"inputs_label": ", ".join(map(str, inputs))}, plots, samples)
    with atomic_file(out, "w", encoding="utf-8") as handle:
        handle.write(page)
    return report | {"html": str(out), "json": str(json_path)}


def _packed_report(folder: Path, cfg: ReportConfig) -> tuple:
    """(numbers, provenance, plots, samples, pack's mask audit, cfg with the folder's max_length)."""
    packed = PackedFolder.at(folder) or PackedFolder(folder, {})
    manifest = packed.manifest
    max_length = int(packed.options.get("max_length") or cfg.max_length)
    cfg = dataclasses.replace(cfg, max_length=max_length)
    numbers, frame, row_tokens = describe_packed(packed, cfg)
    report = {"kind": "packed"} | numbers
    provenance = {"inputs": [{"path": str(folder), "fingerprint": manifest.get("fingerprint"),
                              "inputs": manifest.get("inputs")}], "tokenizer": manifest.get("tokenizer")}
    plots = make_plots(frame, report.get("sources"), max_length, row_tokens, frame is not None)
    audit = (manifest.get("totals") or {}).get("audit")  # pack's own counts (older folders lack them)
    total = (report.get("counts") or {}).get("examples") or 0
    found = []
    for kind in MASK_KINDS:
        if (audit or {}).get(kind):
            # pack counts the examples since this round; an older folder's share is at most count/total
            examples = audit.get(f"{kind}_examples", audit.get("split_conversations") if kind == "split_conversations" else None)
            message = mask_message(kind, audit[kind], examples, audit.get("split_extra_tokens", 0))
            count = examples or audit[kind]
            found.append(finding(kind, min(count, total) if total else count, total,
                                 f"{message} (pack's count; rows not recorded)", []))
    from sftpack.training.runtime import unpacked_note

    note = unpacked_note(cfg.tokenizer or (manifest.get("tokenizer") or {}).get("name_or_path"), manifest.get("totals"))
    if note and total:  # the tokenizer folder holds a model that cannot keep packed rows apart here
        found.append(finding("trains_unpacked", total, total, note, []))
    report["findings"] = sorted(report["findings"] + found, key=lambda f: (-f["impact"], f["kind"]))
    return report, provenance, plots, packed_views(packed, frame, cfg.tokenizer), audit, cfg


def _conversations_report(sources: list[InputSource], cfg: ReportConfig) -> tuple:
    """(numbers, provenance, plots, samples, masking's audit or None without a tokenizer)."""
    from sftpack.schemas.tables import ReportExamples, validate_table

    encoder = _Encoder(cfg) if cfg.tokenizer else None
    frame, scan = scan_jsonl(sources, cfg, encoder)
    validate_table(ReportExamples, frame, "report examples table")
    report = {"kind": "jsonl"} | describe_jsonl(frame, scan, cfg, encoder is not None)
    identity, row_tokens = None, None
    if encoder:
        from sftpack.store.fingerprint import tokenizer_identity

        identity = tokenizer_identity(encoder.tokenizer, encoder.renderer.template)
    if encoder and frame.height:
        kept = kept_lengths(frame, cfg)["length"].to_numpy()
        row_tokens = np.array([kept[row].sum() for row in pack_bins(kept, cfg.max_length)])
    provenance = {"inputs": [input_identity(source) for source in sources], "tokenizer": identity}
    plots = make_plots(frame, report["sources"], cfg.max_length, row_tokens, encoder is not None)
    samples = sample_views(encoder, scan.candidates.choose([f["kind"] for f in report["findings"]])) if encoder else []
    mask_audit = {key: scan.audit_counts[key] for key in AUDIT_KEYS} if encoder else None
    return report, provenance, plots, samples, mask_audit
