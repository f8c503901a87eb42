"""Loading a tokenizer folder, once, the same way for every stage.

One loader means one set of errors and one notion of "the template in use": validate, pack,
report and inspect all come through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError


def _declared_backend_class(path: Path):
    """The class AutoTokenizer would pick, without AutoTokenizer's config.json lookup when the
    folder declares the generic Rust backend itself (that lookup imports the model's config
    class and with it torch: ~3 s of every run, reused or not)."""
    try:
        declared = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        declared = {}
    if isinstance(declared, dict) and declared.get("tokenizer_class") == "TokenizersBackend" \
            and "auto_map" not in declared and (path / "tokenizer.json").is_file():
        from transformers import TokenizersBackend

        return TokenizersBackend
    from transformers import AutoTokenizer  # importing it alone imports torch

    return AutoTokenizer


def check_tokenizer_folder(path: str | Path, where: str = "--tokenizer") -> Path:
    """`path` when it is a folder.

    Raises:
        SftpackError: it is missing, or a file (say tokenizer.json) where the folder holding it is wanted.
    """
    path = Path(path)
    if path.is_file():
        raise SftpackError(f"{path}: is a file; {where} takes the tokenizer's (model's) folder, the one holding "
                           f"tokenizer.json and tokenizer_config.json: {path.parent}")
    if not path.is_dir():
        raise SftpackError(f"{path}: tokenizer folder not found ({where})")
    return path


def load_tokenizer(path: str | Path, where: str = "--tokenizer") -> Any:
    """A fast tokenizer from a local folder: a RustTokenizer where the folder allows one, else
    the transformers tokenizer (both give the parts the data stages read).

    Args:
        path: tokenizer or model folder.
        where: the option or key that named it, for messages.

    Raises:
        SftpackError: the folder is missing, holds no tokenizer, or only a slow one.
    """
    from sftpack.templates.rust_tokenizer import RustTokenizer  # not imported by a reused pack

    path = check_tokenizer_folder(path, where)
    light = RustTokenizer.load(path)  # no transformers import (~1 s) when the folder allows it
    if light is not None:
        return light
    try:
        tokenizer = _declared_backend_class(path).from_pretrained(path)
    except (OSError, ValueError) as err:
        raise SftpackError(f"{path}: cannot load a tokenizer ({where}): {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise SftpackError(f"{path}: a fast tokenizer (tokenizer.json) is required ({where})")
    return tokenizer


def load_renderer(path: str | Path, chat_template: str | Path | None = None, where: str = "--tokenizer",
                  template_kwargs: dict | None = None, stop_tokens: tuple[str, ...] | list[str] | None = None):
    """The tokenizer and the chat template to render with: the file `chat_template` if given,
    else the tokenizer's own; `template_kwargs` and `stop_tokens` as ChatRenderer takes them.

    Returns:
        (tokenizer, ChatRenderer).

    Raises:
        SftpackError: as `load_tokenizer`, a missing template file, or no template at all.
    """
    from sftpack.templates.chat_template import ChatRenderer

    tokenizer = load_tokenizer(path, where)
    template = None
    if chat_template:
        template_path = Path(chat_template)
        if not template_path.is_file():
            raise SftpackError(f"{template_path}: chat template file not found")
        template = template_path.read_text(encoding="utf-8")
    elif not tokenizer.chat_template:
        raise SftpackError(f"{path}: the tokenizer has no chat template, so conversations cannot be rendered; "
                           f"pass --chat-template FILE")
    return tokenizer, ChatRenderer(tokenizer, template, template_kwargs, stop_tokens)
