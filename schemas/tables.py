"""pandera (polars backend) schemas for the tables sftpack writes and the test fixtures.

`validate_table(schema, frame, where)` turns pandera's errors into one SftpackError naming
the table, the column or check at fault and the failing rows. `message_rows` flattens a
messages JSONL file (a test fixture) into the MessageRows table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandera.polars as pa
import polars as pl

from sftpack.errors import SftpackError

DROP_REASONS = [
    "invalid_record",  # packed folders made before pack ran validate's checks
    "template_error", "too_long", "no_trained_tokens",
    # pack drops what validate rejects, under the first rule (tests/test_inputs_everywhere.py keeps this complete)
    "rejected_invalid_utf8", "rejected_invalid_json", "rejected_not_object", "rejected_trailing_garbage",
    "rejected_lone_surrogate", "rejected_schema_type", "rejected_schema_required", "rejected_schema_enum",
    "rejected_schema_const", "rejected_schema_minItems", "rejected_schema_minLength", "rejected_no_assistant_turn",
    "rejected_empty_assistant", "rejected_tool_calls_not_assistant", "rejected_reasoning_not_assistant",
    "rejected_train_not_assistant",
    "rejected_system_not_first", "rejected_tool_without_call", "rejected_role_order", "rejected_control_token",
    "rejected_convert_missing", "rejected_convert_type", "rejected_convert_role", "rejected_convert_tool_call",
    "rejected_convert_tools",
]
ROLES = ["system", "user", "assistant", "tool"]


class ExampleStats(pa.DataFrameModel):
    """stats.parquet of a packed folder: one row per input example."""

    example_id: str = pa.Field(nullable=False)
    source: str = pa.Field(nullable=True)
    input: str
    line: pl.Int64 = pa.Field(ge=1)
    turns: pl.Int32 = pa.Field(ge=0)
    sequences: pl.Int32 = pa.Field(ge=0)
    """Trained sequences the example became (more than 1 when --turns auto splits it)."""
    tokens: pl.Int32 = pa.Field(ge=0)
    trained_tokens: pl.Int32 = pa.Field(ge=0)
    truncated: bool
    dropped: str = pa.Field(nullable=True, isin=DROP_REASONS)

    @pa.dataframe_check
    def trained_within_tokens(cls, data) -> pl.LazyFrame:
        # A dropped too-long example keeps its full (unpacked) counts; both stay comparable.
        return data.lazyframe.select(pl.col("trained_tokens") <= pl.col("tokens"))

    @pa.dataframe_check
    def kept_examples_have_trained_tokens(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("dropped").is_not_null() | (pl.col("trained_tokens") > 0))

    class Config:
        strict = True


class PackedRowLengths(pa.DataFrameModel):
    """Per-row lengths of a packed shard (see `packed_row_lengths`)."""

    input_ids: pl.Int64 = pa.Field(ge=1)
    labels: pl.Int64 = pa.Field(ge=1)
    seq_lengths_sum: pl.Int64 = pa.Field(ge=1)
    sequences: pl.Int64 = pa.Field(ge=1)
    example_ids: pl.Int64 = pa.Field(ge=1)
    max_length: pl.Int64 = pa.Field(ge=1)

    @pa.dataframe_check
    def labels_match_input_ids(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("labels") == pl.col("input_ids"))

    @pa.dataframe_check
    def seq_lengths_sum_to_row(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("seq_lengths_sum") == pl.col("input_ids"))

    @pa.dataframe_check
    def one_id_per_sequence(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("example_ids") == pl.col("sequences"))

    @pa.dataframe_check
    def within_max_length(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("input_ids") <= pl.col("max_length"))


class MessageRows(pa.DataFrameModel):
    """A messages JSONL fixture flattened to one row per message (see `message_rows`).

    A line that is not a JSON object with a `messages` list becomes one row with null role
    and content, so it fails here naming its line.
    """

    line: pl.Int64 = pa.Field(ge=1)
    turn: pl.Int64 = pa.Field(ge=0)
    role: str = pa.Field(isin=ROLES)
    content: str = pa.Field(nullable=False)
    tool_calls: pl.Int64 = pa.Field(ge=0)


class ReportExamples(pa.DataFrameModel):
    """The report's per-example table (pipeline/reporting/stage.py): one row per valid conversation."""

    input: str
    line: pl.Int64 = pa.Field(ge=1)
    example_id: str
    source: str
    turns: pl.Int64 = pa.Field(ge=1)
    tool_calls: pl.Int64 = pa.Field(ge=0)
    has_system: bool
    shortest_answer_chars: pl.Int64 = pa.Field(nullable=True, ge=0)
    script: str
    duplicate_of: pl.Int64 = pa.Field(nullable=True, ge=1)
    similar_prompt_of: pl.Int64 = pa.Field(nullable=True, ge=1)
    tokens: pl.Int64 = pa.Field(nullable=True, ge=0)
    trained_tokens: pl.Int64 = pa.Field(nullable=True, ge=0)
    trained_beyond_max: pl.Int64 = pa.Field(nullable=True, ge=0)

    @pa.dataframe_check
    def trained_within_tokens(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("trained_tokens") <= pl.col("tokens")).fill_null(True))

    @pa.dataframe_check
    def repeats_point_backwards(cls, data) -> pl.LazyFrame:
        # duplicate_of / similar_prompt_of hold the example index (1-based) of an earlier example.
        index = pl.int_range(1, pl.len() + 1)
        return data.lazyframe.select(
            (pl.col("duplicate_of").fill_null(0) < index) & (pl.col("similar_prompt_of").fill_null(0) < index))

    class Config:
        strict = True


def packed_row_lengths(frame: pl.DataFrame, max_length: int) -> pl.DataFrame:
    """The lengths table of packed rows (columns input_ids, labels, seq_lengths, example_ids)."""
    return frame.select(
        pl.col("input_ids").list.len().cast(pl.Int64),
        pl.col("labels").list.len().cast(pl.Int64),
        pl.col("seq_lengths").list.sum().cast(pl.Int64).alias("seq_lengths_sum"),
        pl.col("seq_lengths").list.len().cast(pl.Int64).alias("sequences"),
        pl.col("example_ids").list.len().cast(pl.Int64),
    ).with_columns(pl.lit(max_length, pl.Int64).alias("max_length"))


def message_rows(path: str | Path) -> pl.DataFrame:
    """Flatten a messages JSONL file to MessageRows: one row per message, blank lines skipped.

    Args:
        path: the JSONL file.

    Returns:
        Columns line (1-based), turn, role, content (None where not a string), tool_calls
        (count). A line that is not an object with a `messages` list, or a message that is not
        an object, gives one row with null role and content.
    """
    rows: dict[str, list] = {"line": [], "turn": [], "role": [], "content": [], "tool_calls": []}

    def add(line: int, turn: int, role, content, calls: int) -> None:
        for key, value in zip(rows, (line, turn, role, content, calls)):
            rows[key].append(value)

    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                messages = json.loads(raw)["messages"]
            except (ValueError, KeyError, TypeError):
                messages = None
            if not isinstance(messages, list):
                add(line_no, 0, None, None, 0)
                continue
            for turn, message in enumerate(messages):
                if not isinstance(message, dict):
                    add(line_no, turn, None, None, 0)
                    continue
                role, content, calls = message.get("role"), message.get("content"), message.get("tool_calls")
                add(line_no, turn, role if isinstance(role, str) else None,
                    content if isinstance(content, str) else None, len(calls) if isinstance(calls, list) else 0)
    schema = {"line": pl.Int64, "turn": pl.Int64, "role": pl.String, "content": pl.String, "tool_calls": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


MAX_ROWS_NAMED = 10
"""Failing rows listed per column and check in an error message."""


def validate_table(schema: type[pa.DataFrameModel], frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """Validate `frame` against `schema`, collecting every failure.

    Args:
        schema: the pandera model.
        frame: the table.
        where: what the table is (a file name), the first word of the error.

    Returns:
        The validated frame.

    Raises:
        SftpackError: naming `where` and, per failing column or check, the failing rows (0-based
            row index, and the `line` value when the table has a `line` column) and values, e.g.
            `role: isin([...]) fails at rows [2] (line 5): 'human'`.
    """
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        lines = []
        for (column, check), group in cases.group_by(["column", "check"], maintain_order=True):
            indices = [i for i in group["index"].to_list() if i is not None]
            if not indices:  # missing column, wrong dtype: about the whole table
                values = ", ".join(str(v) for v in group["failure_case"].to_list()[:MAX_ROWS_NAMED])
                lines.append(f"{column}: {check}: {values}")
                continue
            shown = sorted(set(indices))[:MAX_ROWS_NAMED]
            more = f" (+{len(set(indices)) - len(shown)} more)" if len(set(indices)) > len(shown) else ""
            where_lines = ""
            if "line" in frame.columns:
                file_lines = frame["line"].gather(shown).to_list()
                where_lines = f" (line{'s' if len(shown) > 1 else ''} {', '.join(map(str, file_lines))})"
            values = ", ".join(repr(v) for v in group["failure_case"].to_list()[:3])
            lines.append(f"{column}: {check} fails at rows {shown}{more}{where_lines}: {values}")
        raise SftpackError(f"{where}: does not match {schema.__name__}:\n  " + "\n  ".join(lines)) from None
