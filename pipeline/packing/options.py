"""Pack's options: one frozen dataclass, each field defined once with its default and meaning.

Kept apart from the stage so that the encoding workers, which receive a PackConfig, never import the
pack stage itself. Where the work runs (workers, a Ray cluster) is not an option here but an
`sftpack.execution.Execution`: it never changes the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sftpack.config.data_options import DataOptions, data_values
from sftpack.errors import SftpackError


@dataclass(frozen=True)
class PackConfig(DataOptions):
    """pack's options: the data options (config/data_options.py), then how pack writes."""

    batch_size: int = 512
    """Conversations per tokenizer call."""
    shard_tokens: int = 32_000_000
    """Tokens per shard file (about 256 MB of ids and labels)."""
    allow_rejects: bool = False
    """Go on when records fail validate's checks (they are dropped and counted as rejected_<rule>
    either way); False: the stage fails naming them, as validate does. Not part of the output."""

    def __post_init__(self) -> None:
        problems = self.data_problems()
        if not self.tokenizer:
            problems.append("tokenizer: give the tokenizer folder (--tokenizer PATH, model.name_or_path)")
        if self.batch_size < 1 or self.shard_tokens < 1:
            problems.append("batch_size and shard_tokens must be positive")
        if problems:
            raise SftpackError("options: " + "; ".join(problems))

    @classmethod
    def from_run_config(cls, run_config: Any, **overrides: Any) -> "PackConfig":
        """The pack options a run config implies (model.name_or_path, data.*), then `overrides`."""
        return cls(**data_values(run_config, {"allow_rejects": run_config.data.allow_rejects} | overrides))

    def output_options(self) -> dict[str, Any]:
        """The options that change the output (batch_size and allow_rejects do not; where the work runs is
        not an option: sftpack.execution)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("batch_size", "tokenizer", "allow_rejects")}

    def load_renderer(self) -> tuple[Any, Any]:
        """(tokenizer, ChatRenderer) with this config's template, template arguments and stop tokens."""
        from sftpack.templates.tokenizer import load_renderer

        return load_renderer(self.tokenizer, self.chat_template, template_kwargs=self.chat_template_kwargs,
                             stop_tokens=self.stop_tokens)
