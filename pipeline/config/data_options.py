"""The data options every stage that prepares conversations reads, each defined once.

Which tokens are trained is `MaskOptions` (pipeline/templates/turn_targets.py: train_on, turns, reasoning);
this module holds the lengths and the packing, and the one mapping from a run config's `data`
section and command-line flags onto a stage's options (flags win over the config, the config over
the defaults). `schemas/run_config.schema.json` lists the same choices for config files;
tests/test_foundation.py checks the two agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sftpack.templates.fields import RESERVED_TEMPLATE_ARGS
from sftpack.templates.turn_targets import REASONING, TRAIN_ON, TURNS, MaskOptions

Strategy = Literal["bfd", "none"]
Truncation = Literal["drop", "truncate"]
STRATEGIES: tuple[str, ...] = Strategy.__args__
TRUNCATIONS: tuple[str, ...] = Truncation.__args__
DEFAULT_MAX_LENGTH = 1024
"""Longest packed row in tokens, and the longest example kept, unless configured."""
MIN_MAX_LENGTH = 8
CHOICES = {"train_on": TRAIN_ON, "turns": TURNS, "reasoning": REASONING, "truncation": TRUNCATIONS,
           "strategy": STRATEGIES}
"""Option -> its accepted values, for flags and messages."""
DATA_KEYS = ("tokenizer", "max_length", "chat_template", "strategy", "train_on", "turns", "reasoning", "truncation",
             "chat_template_kwargs", "stop_tokens")
"""What a stage that prepares conversations takes from `model.name_or_path` and the `data` section."""


def problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with the data options among `values`, one message each."""
    found = [f"{key} {values[key]!r}: expected one of {', '.join(choices)}"
             for key, choices in CHOICES.items() if key in values and key not in MaskOptions.__dataclass_fields__
             and values[key] not in choices]
    mask = {key: values[key] for key in MaskOptions.__dataclass_fields__ if key in values}
    found += MaskOptions(**mask).problems()
    if "max_length" in values and values["max_length"] < MIN_MAX_LENGTH:
        found.append(f"max_length {values['max_length']}: must be at least {MIN_MAX_LENGTH}")
    kwargs = values.get("chat_template_kwargs")
    if kwargs is not None and (not isinstance(kwargs, dict) or set(kwargs) & set(RESERVED_TEMPLATE_ARGS)):
        found.append(f"chat_template_kwargs {kwargs!r}: a mapping of template variables other than "
                     f"{', '.join(sorted(RESERVED_TEMPLATE_ARGS))}")
    stops = values.get("stop_tokens")
    if stops is not None and (isinstance(stops, str) or not stops or not all(isinstance(t, str) and t for t in stops)):
        found.append(f"stop_tokens {stops!r}: a non-empty list of tokens (--stop-tokens '<|im_end|>')")
    return found


def data_values(run_config: Any | None, flags: dict[str, Any]) -> dict[str, Any]:
    """DATA_KEYS values: the run config's (model.name_or_path, data.*), then the flags given.

    Args:
        run_config: a loaded RunConfig, or None.
        flags: option -> value from the command line; None values are not given.
    """
    values: dict[str, Any] = {}
    if run_config is not None:
        data = run_config.data
        values = {"tokenizer": run_config.model.name_or_path, "max_length": data.max_length,
                  "chat_template": data.chat_template, "strategy": "bfd" if data.packing else "none",
                  "train_on": data.train_on, "turns": data.turns, "reasoning": data.reasoning,
                  "truncation": data.truncation, "chat_template_kwargs": dict(data.chat_template_kwargs) or None,
                  "stop_tokens": None if data.stop_tokens is None else tuple(data.stop_tokens)}
    return values | {key: value for key, value in flags.items() if value is not None}


@dataclass(frozen=True)
class DataOptions:
    """The options of DATA_KEYS, each defined once: which text of a conversation becomes which tokens,
    and how they are packed. pack (`PackConfig`) and report (`ReportConfig`) extend it."""

    tokenizer: str | None = None
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

    def data_problems(self) -> list[str]:
        """What is wrong with these options (a list stop_tokens becomes a tuple first)."""
        if isinstance(self.stop_tokens, list):
            object.__setattr__(self, "stop_tokens", tuple(self.stop_tokens))
        return problems(dataclasses.asdict(self))

    def mask_options(self) -> MaskOptions:
        """The options that decide which tokens are trained."""
        return MaskOptions(self.train_on, self.turns, self.reasoning)


def with_absolute_paths(options: Any) -> Any:
    """`options` (a dataclass: pack's and validate's options, a mix recipe) with its `tokenizer` and
    `chat_template` paths, those it has, absolute: what a worker, on any node, is handed; manifests
    keep the options as given."""
    paths = {name: getattr(options, name) for name in ("tokenizer", "chat_template") if hasattr(options, name)}
    return dataclasses.replace(options, **{name: path and str(Path(path).resolve()) for name, path in paths.items()})


assert tuple(f.name for f in dataclasses.fields(DataOptions)) == DATA_KEYS


def execution(run_config: Any | None, ray: str | None = None, num_proc: int | None = None) -> Any:
    """Where a stage's tasks run (an execution.Execution), chosen once: `ray` (else the run config's
    data.ray) names a Ray cluster; else `num_proc` processes here (None: the available cores). Never
    part of a fingerprint. The API's stages and train's own validate and pack all take it from here."""
    from sftpack.execution import Execution

    return Execution(workers=num_proc, ray=ray or (run_config.data.ray if run_config is not None else None))
