"""Reading a packed folder: its manifest, whether its shards are the bytes pack wrote, its rows and
stats. `PackedFolder` is the one code that reads a packed folder (pack's reuse, train, report,
inspect, plan); it imports neither numpy nor pyarrow until rows or stats are asked for, so a
reused pack starts fast. The row format and its checks are pipeline/store/shards.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftpack.store.manifest import MANIFEST, read_manifest, shard_checksum_error

if TYPE_CHECKING:
    import pyarrow as pa

@dataclass(frozen=True)
class PackedFolder:
    """A packed folder as `sftpack pack` writes it: the one code that reads one.

        out/packed/<fingerprint>/
            manifest.json            written last: inputs, tokenizer, options, shards, totals
            stats.parquet            one row per input example (ExampleStats)
            data-*.arrow, state.json, dataset_info.json   the rows, for datasets.load_from_disk
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def at(cls, path: str | Path) -> "PackedFolder | None":
        """The folder at `path`, or None when it holds no readable manifest (not packed, or
        incomplete: the manifest is written last)."""
        manifest = read_manifest(path)
        return None if manifest is None else cls(Path(path), manifest)

    @staticmethod
    def holds_one(path: str | Path) -> bool:
        """Whether `path` is a folder with a manifest (cheap: the manifest is not parsed)."""
        return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()

    @property
    def reused(self) -> bool:
        """Whether the pack that returned this folder found it already built (`sftpack.pack`)."""
        return bool(self.manifest.get("reused"))

    @property
    def options(self) -> dict[str, Any]:
        return self.manifest.get("options") or {}

    @property
    def totals(self) -> dict[str, Any]:
        return self.manifest.get("totals") or {}

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.manifest.get("tokenizer") or {}

    def verify(self) -> list[str]:
        """Every shard against the manifest (shards.verify_folder); empty when sound."""
        from sftpack.store.shards import verify_folder

        return verify_folder(self.path)

    def checksum_errors(self) -> list[str]:
        """Every shard's presence and sha256 against the manifest; empty when the bytes are those
        pack wrote in this folder. The cheap half of `verify`, for reuse."""
        return [problem for shard in self.manifest["shards"]
                if (problem := shard_checksum_error(self.path / shard["file"], shard))]

    def dataset(self):
        """The rows as a `datasets.Dataset` (memory-mapped, `datasets.load_from_disk`): input_ids,
        labels (-100 where not trained), seq_lengths and example_ids per packed row. TRL's
        SFTTrainer takes it as it is, with `padding_free=True` and
        `dataset_kwargs={"skip_prepare_dataset": True}` (README "From Python")."""
        import datasets

        return datasets.load_from_disk(str(self.path))

    def stats(self, columns: list[str] | None = None) -> "pa.Table":
        """stats.parquet: one row per input example."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path / "stats.parquet", columns=columns)
