"""pandera (polars backend) schemas for the tables sftpack writes and the test fixtures.

`validate_table(schema, frame, where)` turns pandera's errors into one SftpackError naming
the table, the column or check at fault and the failing rows.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from pipeline.errors import SftpackError

DROP_REASONS = ["invalid_record", "template_error", "too_long", "no_trained_tokens"]
ROLES = ["system", "user", "assistant", "tool"]


class ExampleStats(pa.DataFrameModel):
    """stats.parquet of a packed folder: one row per input example."""

    example_id: str = pa.Field(nullable=False)
    source: str = pa.Field(nullable=True)
    input: str
    line: pl.Int64 = pa.Field(ge=1)
    turns: pl.Int32 = pa.Field(ge=0)
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
    """A messages JSONL fixture flattened to one row per message (see `message_rows`)."""

    line: pl.Int64 = pa.Field(ge=1)
    turn: pl.Int64 = pa.Field(ge=0)
    role: str = pa.Field(isin=ROLES)
    content: str = pa.Field(nullable=True)
    tool_calls: pl.Int64 = pa.Field(ge=0)


def packed_row_lengths(frame: pl.DataFrame, max_length: int) -> pl.DataFrame:
    """The lengths table of packed rows (columns input_ids, labels, seq_lengths, example_ids)."""
    return frame.select(
        pl.col("input_ids").list.len().cast(pl.Int64),
        pl.col("labels").list.len().cast(pl.Int64),
        pl.col("seq_lengths").list.sum().cast(pl.Int64).alias("seq_lengths_sum"),
        pl.col("seq_lengths").list.len().cast(pl.Int64).alias("sequences"),
        pl.col("example_ids").list.len().cast(pl.Int64),
    ).with_columns(pl.lit(max_length, pl.Int64).alias("max_length"))


def validate_table(schema: type[pa.DataFrameModel], frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """Validate `frame` against `schema`, collecting every failure.

    Raises:
        SftpackError: naming `where`, each failing column or check and its first failing rows.
    """
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        lines = []
        for category in err.message.values():
            for check, failures in category.items():
                for failure in failures[:10]:
                    lines.append(f"{failure.get('column')}: {check.lower()} {failure.get('check')}: {failure.get('error')}")
        raise SftpackError(f"{where}: does not match {schema.__name__}:\n  " + "\n  ".join(lines)) from None
