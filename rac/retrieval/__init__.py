"""BM25 retrieval (U_q -> D): Elasticsearch or embedded backends, and the Ray Data stages."""

from rac.retrieval.base import (
    IndexMissingError,
    RetrievalError,
    Retriever,
    ServerUnavailableError,
    bm25_terms,
    query_error,
)
from rac.retrieval.config import ElasticsearchConfig, IndexConfig, RetrieveConfig, RetrieverConfig
from rac.retrieval.elasticsearch import ElasticsearchRetriever
from rac.retrieval.embedded import EmbeddedBM25Retriever
from rac.retrieval.report import format_examples
from rac.retrieval.stage import (
    IndexBatch,
    RetrieveBatch,
    make_retriever,
    read_retrieved,
    retrieve_dataset,
    run_index,
    run_retrieve,
)

__all__ = [
    "ElasticsearchConfig", "ElasticsearchRetriever", "EmbeddedBM25Retriever", "IndexBatch", "IndexConfig",
    "IndexMissingError", "RetrievalError", "RetrieveBatch", "RetrieveConfig", "Retriever", "RetrieverConfig",
    "ServerUnavailableError", "bm25_terms", "format_examples", "make_retriever", "query_error", "read_retrieved",
    "retrieve_dataset", "run_index", "run_retrieve",
]
