"""The ``data`` section shared by every stage that reads records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rac.config import ConfigError, field_help


@dataclass
class DataConfig:
    """Which records to load, how to build the passage corpus, and how to split."""

    format: Literal["demo", "qulac", "clariq", "jsonl", "parquet"] = field_help(
        "demo", help="Input format: the built-in demo set, Qulac JSON, ClariQ TSV, or JSONL/Parquet records.")
    path: str | None = field_help(None, help="Input file (not needed for the demo set).")
    corpus_path: str | None = field_help(
        None, help="Passage corpus (JSONL/Parquet with id, text). Default: built from the data set's "
                   "topic and facet descriptions.")
    dedupe: bool = field_help(True, help="Keep a question repeated for several facets of one topic once.")
    split_fractions: list[float] = field_help(
        [0.45, 0.45, 0.1], help="Fractions of topics in T1 (SFT), T2 (preferences) and test.")
    seed: int = field_help(0, help="Seed of the topic split.")
    limit: int | None = field_help(None, help="Use only the first N records (smoke runs).")

    def __post_init__(self) -> None:
        if self.format != "demo" and not self.path:
            raise ConfigError(f"data.path is required for data.format '{self.format}'")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) \
                or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"split_fractions must be three non-negative numbers summing to 1, "
                              f"got {self.split_fractions}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be a positive number of records, got {self.limit}")
