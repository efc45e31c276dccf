"""Embedded BM25 (no server): ``bm25s`` with Elasticsearch's formula and tokenisation.

Scores follow Elasticsearch's BM25 (Lucene's idf and length normalisation, times the
``k1 + 1`` factor Elasticsearch keeps), with ``k1`` and ``b`` from config. Two
differences from an Elasticsearch index remain, both measured by ``bench/retrieval.py``
and the parity test: Lucene stores a document's length in one byte (exact up to 40
tokens, rounded above), so long passages score slightly differently; and the tokeniser
is a regular expression close to, not equal to, the standard analyzer's UAX #29 rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rac.durable import write_json
from rac.retrieval.base import Hit, IndexMissingError, bm25_terms

logger = logging.getLogger(__name__)

PASSAGES_FILE = "passages.parquet"
PARAMS_FILE = "rac_params.json"


def _bm25s():
    try:
        import bm25s
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the embedded backend needs bm25s: pip install bm25s") from e
    return bm25s


class EmbeddedBM25Retriever:
    """BM25 over an in-memory index saved in ``index_dir``."""

    def __init__(self, index_dir: str | Path):
        index_dir = Path(index_dir)
        if not (index_dir / PARAMS_FILE).is_file():
            raise IndexMissingError(
                f"no embedded BM25 index in {index_dir}; run `python -m jobs.index` first "
                f"or set retriever.index_dir to the directory it wrote")
        params = json.loads((index_dir / PARAMS_FILE).read_text())
        self.k1, self.b = params["k1"], params["b"]
        self.model = _bm25s().BM25.load(str(index_dir / "bm25s"), show_progress=False)
        table = pq.read_table(index_dir / PASSAGES_FILE)
        self.ids: list[str] = table.column("id").to_pylist()
        self.texts: list[str] = table.column("text").to_pylist()

    @staticmethod
    def build(passages: list[dict[str, Any]], index_dir: str | Path, k1: float = 1.2, b: float = 0.75) -> Path:
        """Index ``passages`` (``{id, text}``) and save the index to ``index_dir``."""
        bm25s = _bm25s()
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        model = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
        model.index([bm25_terms(p["text"]) for p in passages], show_progress=False)
        model.save(str(index_dir / "bm25s"), show_progress=False)
        pq.write_table(pa.Table.from_pylist([{"id": p["id"], "text": p["text"]} for p in passages]),
                       index_dir / PASSAGES_FILE)
        digest = hashlib.sha256(json.dumps([[p["id"], p["text"]] for p in passages]).encode()).hexdigest()[:16]
        # Written last and whole: its presence marks a complete index.
        write_json(index_dir / PARAMS_FILE, {"k1": k1, "b": b, "num_passages": len(passages),
                                             "corpus_digest": digest})
        logger.info("embedded BM25 index of %d passages written to %s", len(passages), index_dir)
        return index_dir

    def scores(self, query: str) -> np.ndarray:
        """Elasticsearch-scale BM25 score of every passage for ``query``."""
        vocab = self.model.vocab_dict
        # A repeated query word counts once per occurrence, as in Elasticsearch's match query.
        ids = [vocab[t] for t in bm25_terms(query) if t in vocab]
        if not ids:
            return np.zeros(len(self.ids))
        return self.model.get_scores_from_ids(ids) * (self.k1 + 1)

    def search(self, queries: list[str], top_k: int) -> list[list[Hit] | str]:
        results: list[list[Hit] | str] = []
        for query in queries:
            scores = self.scores(query)
            k = min(top_k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            # Best first; ties in index order, as Lucene breaks them by document order.
            top = sorted(top.tolist(), key=lambda i: (-scores[i], i))
            results.append([{"id": self.ids[i], "text": self.texts[i], "score": float(scores[i])}
                            for i in top if scores[i] > 0])
        return results

    def close(self) -> None:
        pass
