"""Content fingerprints: file hashes, tokenizer identity, and the hash of a stage's inputs.

Reuse is decided by content, never by timestamps or paths: a fingerprint covers
everything that changes a stage's output and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FINGERPRINT_CHARS = 16


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_identity(path: str | Path, chunk: int = 1 << 20) -> dict[str, Any]:
    """sha256, byte size and line count of a file, in one streaming pass."""
    digest = hashlib.sha256()
    lines = 0
    size = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            lines += block.count(b"\n")
            size += len(block)
            last = block[-1:]
    if last != b"\n":
        lines += 1  # a final line without a newline still counts
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": size, "lines": lines}


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",  # slow sources, converted when no tokenizer.json
    "config.json",  # AutoTokenizer picks the class from it when tokenizer_config.json does not say
    "generation_config.json",  # its eos_token_id are the stop markers that end trained turns
)
"""The files of a tokenizer folder that transformers reads to build the tokenizer and its template,
and the generation config whose stop tokens decide where trained turns end."""
CHAT_TEMPLATE_DIR = "additional_chat_templates"


def tokenizer_files_identity(folder: str | Path) -> dict[str, str]:
    """{file name: sha256} of the tokenizer files present in `folder` (see TOKENIZER_FILES, plus
    additional_chat_templates/*.jinja). Covers everything that loading the tokenizer reads, so it
    stands in for `tokenizer_identity` when deciding reuse, without loading the tokenizer (~1 s,
    transformers import included). The folder's path is not part of it."""
    folder = Path(folder)
    names = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    extra = folder / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        names += sorted(f"{CHAT_TEMPLATE_DIR}/{p.name}" for p in extra.glob("*.jinja") if p.is_file())
    return {name: sha256_file(folder / name) for name in names}


def tokenizer_identity(tokenizer: Any, chat_template: str | None) -> dict[str, Any]:
    """What about a tokenizer changes tokenization: its vocabulary and merges, special
    tokens and the chat template in use. The path is recorded but not hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise TypeError("a fast (Rust-backed) tokenizer is required")
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": getattr(tokenizer, "class_name", type(tokenizer).__name__),  # RustTokenizer's stand-in class
        "vocab_sha256": sha256_text(backend.to_str()),
        "special_tokens": {
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "additional": sorted(str(t) for t in tokenizer.all_special_tokens),
        },
        "chat_template_sha256": sha256_text(chat_template or ""),
    }


def fingerprint(payload: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able payload (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:FINGERPRINT_CHARS]
