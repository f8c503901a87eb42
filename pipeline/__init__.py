"""sftpack: validate, template, mask and pack chat data into reusable Arrow shards, then train with TRL.

    import sftpack
    folder = sftpack.pack(["chats.jsonl"], "out/packed", tokenizer="models/smollm2-135m-instruct")
    trainer = trl.SFTTrainer(model=..., train_dataset=folder.dataset(), ...)

The stages (`validate`, `mix`, `pack`, `report`, `plan`, `train`, `export`; sftpack/api.py) and `PackedFolder` are
imported on first use, so `import sftpack` stays fast and pulls in neither torch nor pyarrow.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# TRL and PEFT import bitsandbytes, whose CPU backend warns at import that it cannot fetch an optional hub kernel.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# name -> module that defines it (imported on first access)
_LAZY = {
    "validate": "sftpack.api",
    "pack": "sftpack.api",
    "report": "sftpack.api",
    "plan": "sftpack.api",
    "train": "sftpack.api",
    "mix": "sftpack.api",
    "export": "sftpack.api",
    "PackedFolder": "sftpack.store.packed_folder",
    "SftpackError": "sftpack.errors",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sftpack' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
