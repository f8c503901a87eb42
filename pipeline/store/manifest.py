"""A packed folder's manifest file and shard checksums: what both the folder reader
(packed_folder) and the row format (shards) need, so neither imports the other at load time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftpack.store.fingerprint import sha256_file

MANIFEST = "manifest.json"


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it is missing or unreadable (incomplete)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shard_checksum_error(path: Path, shard: dict[str, Any]) -> str | None:
    """Why the shard file at `path` is not the one the manifest entry `shard` names, or None."""
    if not path.is_file():
        return f"{path}: shard missing"
    if sha256_file(path) != shard["sha256"]:
        return f"{path}: sha256 differs from the manifest (file changed or corrupt)"
    return None
