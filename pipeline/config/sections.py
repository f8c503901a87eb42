"""The config sections a stage reads, as files make can depend on: DIR/<section>.json.

make decides by mtime, and validate, pack and report read only the `model` and `data`
sections: depending on the whole config would re-run them when a `train` value changes.
Each section is written resolved (defaults filled in, so writing out a default changes
nothing) and only when its content changed: an unchanged section keeps its old mtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sftpack.config.run_config import build_config, load_config, parse_yaml

# The sections validate, pack and report read (train also reads `train` and `monitor`, and
# depends on the whole config file).
SECTIONS = ("model", "data")


def resolved_sections(config_path: str | Path, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """The named sections of a run config, validated and with their defaults filled in.

    `train` and `peft` are left out of this validation (build_config's `trainer`): checking them
    imports TRL and PEFT (seconds), and this runs every time make reads the Makefile; train checks
    the whole config when it loads it.

    Returns:
        Section name -> its resolved values (RunConfig.to_dict).

    Raises:
        SftpackError: a missing file, invalid YAML (with its line) or invalid model/data
            sections, worded as every stage words them.
    """
    path = Path(config_path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        load_config(path)  # raises the stages' own message: missing file, YAML error with its line
        raise
    resolved = build_config(raw, source=str(path), trainer=False).to_dict()
    return {name: resolved[name] for name in sections}


def write_sections(config_path: str | Path, out_dir: str | Path,
                   sections: tuple[str, ...] = SECTIONS) -> list[Path]:
    """Write each section to out_dir/<section>.json where its content changed.

    Returns:
        The files written (new or changed); the others were left as they were, mtime included.

    Raises:
        SftpackError: see `resolved_sections`.
    """
    from sftpack.store.atomic import atomic_file

    written = []
    for name, values in resolved_sections(config_path, sections).items():
        path = Path(out_dir) / f"{name}.json"
        text = json.dumps(values, indent=2, ensure_ascii=False) + "\n"
        try:
            if path.read_text(encoding="utf-8") == text:
                continue  # unchanged: keep the old mtime, so make re-runs nothing
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: write it
        with atomic_file(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
    return written
