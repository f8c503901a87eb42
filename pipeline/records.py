"""What a conversation record is, shared by every concern: the roles, a record, and one problem
with one row (`RowError`). A leaf: it imports nothing of sftpack, so readers (io) and checks
(validation) both build on it without importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sftpack.errors import SftpackError

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGE_CHARS = 200  # error messages quote the offending value; keep them one line

Record = dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """One problem with one line."""

    path: str
    """JSON pointer to the offending value (`/messages/2/content`); "" for the whole line."""
    rule: str
    """Short stable name of the check, used for counting (`rejected_<rule>`)."""
    message: str
    """What is wrong and, where it helps, how to fix it."""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def shorten(text: str) -> str:
    """`text` on one line, at most MAX_MESSAGE_CHARS: how error messages quote a value."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def reject_policy(allow: bool, rejected: dict[str, int], read: int, unit: str, first: list[str], listed: str,
                  go_on: str, where: str = "", setting: str = "data.allow_rejects: true") -> None:
    """The one reject policy of validate, pack, mix and train: unless `allow` (--allow-rejects,
    data.allow_rejects, a recipe's allow_rejects), rows that fail validate's checks stop the stage.

    Args:
        allow: go on with the rest (the rejects stay counted and listed).
        rejected: rule -> rows rejected under it.
        read: rows read, and `unit` what they are (lines, examples, records).
        first: the first rejected rows, each `file:line [rule] message`.
        listed: where every rejected row is listed (a file, or the command that lists them).
        go_on: what --allow-rejects does instead (`pack the rest`).
        where: what the message is about (a config key and input), if not the stage's own input.
        setting: the setting that allows rejects where the stage reads it.

    Raises:
        SftpackError: (exit 1) the count per rule, the first rows and the way out.
    """
    total = sum(rejected.values())
    if not total or allow:
        return
    rules = ", ".join(f"{rule}={count}" for rule, count in sorted(rejected.items()))
    lines = "".join(f"\n  {line}" for line in first[:5])
    raise SftpackError(f"{where + ': ' if where else ''}{total} of {read} {unit} failed validate's checks ({rules}); "
                       f"the first:{lines}\n{listed}; fix them, or pass --allow-rejects ({setting}) to {go_on}",
                       exit_code=1)
