"""Pack's options: one frozen dataclass, each field defined once with its default and meaning.

Kept apart from the stage so that the encoding workers, which receive a PackConfig, never import the
pack stage itself. Where the work runs (workers, a Ray cluster) is not an option here but an
`sftpack.execution.Execution`: it never changes the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sftpack.config.data_options import DEFAULT_MAX_LENGTH, data_values
from sftpack.config.data_options import problems as data_problems
from sftpack.errors import SftpackError
from sftpack.templates.turn_targets import MaskOptions


@dataclass(frozen=True)
class PackConfig:
    tokenizer: str
    """Tokenizer folder (usually the model folder)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Longest row in tokens; longer examples are dropped or truncated."""
    chat_template: str | None = None
    """Path to a Jinja chat template that replaces the tokenizer's own."""
    strategy: str = "bfd"
    """bfd: best-fit-decreasing packing; none: one example per row."""
    train_on: str = "all"
    """all: every assistant turn is trained; last: only the final one."""
    turns: str = "auto"
    """auto: a conversation whose template renders a turn unlike at inference is split into the
    fewest sequences that train every turn as the model writes it; whole: one sequence as rendered."""
    reasoning: str = "train"
    """Assistant reasoning: train (with the answer), mask (rendered, not trained), drop (removed)."""
    truncation: str = "drop"
    """Examples longer than max_length: drop (counted) or truncate (keep the start, counted)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Template arguments for every render (enable_thinking, reasoning_effort, ...); a record's own
    `chat_template_kwargs` take precedence."""
    stop_tokens: tuple[str, ...] | None = None
    """The tokens that end an assistant turn; None: generation_config.json's eos_token_id, else
    inferred from the template's rendering (pipeline/templates/stop_markers.py)."""
    batch_size: int = 512
    """Conversations per tokenizer call."""
    shard_tokens: int = 32_000_000
    """Tokens per shard file (about 256 MB of ids and labels)."""
    allow_rejects: bool = False
    """Go on when records fail validate's checks (they are dropped and counted as rejected_<rule>
    either way); False: the stage fails naming them, as validate does. Not part of the output."""

    def __post_init__(self) -> None:
        if isinstance(self.stop_tokens, list):
            object.__setattr__(self, "stop_tokens", tuple(self.stop_tokens))
        problems = data_problems(dataclasses.asdict(self))
        if self.batch_size < 1 or self.shard_tokens < 1:
            problems.append("batch_size and shard_tokens must be positive")
        if problems:
            raise SftpackError("options: " + "; ".join(problems))

    @classmethod
    def from_run_config(cls, run_config: Any, **overrides: Any) -> "PackConfig":
        """The pack options a run config implies (model.name_or_path, data.*), then `overrides`."""
        return cls(**data_values(run_config, {"allow_rejects": run_config.data.allow_rejects} | overrides))

    def mask_options(self) -> MaskOptions:
        """The options that decide which tokens are trained."""
        return MaskOptions(self.train_on, self.turns, self.reasoning)

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
