"""Load records and corpus as a :class:`~rac.data.config.DataConfig` says."""

from __future__ import annotations

from typing import Any

from rac.data.config import DataConfig
from rac.data.corpus import build_corpus
from rac.data.loaders import LoadedData, load_corpus_file, load_data
from rac.data.splits import assign_splits


def prepare_data(cfg: DataConfig) -> tuple[LoadedData, list[dict[str, Any]]]:
    """Records with their split assigned, and the deduplicated passage corpus."""
    loaded = load_data(cfg.format, cfg.path, dedupe=cfg.dedupe)
    if cfg.limit is not None and cfg.limit < len(loaded.records):
        for rec in loaded.records[cfg.limit:]:
            loaded.dropped.append({"row": rec["id"], "id": rec["id"], "reason": f"beyond data.limit={cfg.limit}"})
        loaded.records = loaded.records[:cfg.limit]
    loaded.records = assign_splits(loaded.records, cfg.split_fractions, seed=cfg.seed)
    documents = load_corpus_file(cfg.corpus_path) if cfg.corpus_path else loaded.documents
    return loaded, build_corpus(documents)
