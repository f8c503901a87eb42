"""Every messages JSONL fixture matches the MessageRows pandera schema, except the deliberately
broken ones listed in tests/fixtures/README.md (those are checked to fail instead)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sftpack.errors import SftpackError
from sftpack.schemas.tables import MessageRows, message_rows, validate_table

FIXTURES = Path(__file__).parent / "fixtures"
BROKEN_SECTION = "## Deliberately broken fixtures"


def broken_fixtures() -> dict[str, str]:
    """path (relative to tests/fixtures) -> why, from the README's broken-fixtures list."""
    text = (FIXTURES / "README.md").read_text(encoding="utf-8")
    if BROKEN_SECTION not in text:
        return {}
    section = text.split(BROKEN_SECTION, 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^- `([^`]+)`: (.+)$", section, re.MULTILINE)}


BROKEN = broken_fixtures()
ALL = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.jsonl"))


@pytest.mark.parametrize("name", [name for name in ALL if name not in BROKEN])
def test_fixture_matches_message_rows(name):
    validate_table(MessageRows, message_rows(FIXTURES / name), f"tests/fixtures/{name}")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_listed_broken_fixture_exists_and_fails(name):
    path = FIXTURES / name
    assert path.is_file(), f"tests/fixtures/README.md lists {name} as broken, but there is no such file"
    with pytest.raises(SftpackError, match="does not match MessageRows"):
        validate_table(MessageRows, message_rows(path), name)


def test_a_broken_fixture_fails_naming_column_and_rows(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
                    '{"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": 5}]}\n'
                    "not json\n", encoding="utf-8")
    with pytest.raises(SftpackError) as err:
        validate_table(MessageRows, message_rows(path), "broken.jsonl")
    message = str(err.value)
    assert message.startswith("broken.jsonl: does not match MessageRows")
    assert "role: isin(['system', 'user', 'assistant', 'tool']) fails at rows [2] (line 2): 'human'" in message
    assert "content: not_nullable fails at rows [3, 4] (lines 2, 3)" in message
    assert "role: not_nullable fails at rows [4] (line 3)" in message
