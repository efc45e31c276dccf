"""Configs of the retrieval stages: the retriever section, and the index/retrieve stages."""

from __future__ import annotations

from dataclasses import dataclass

from rac.config import ActorPoolConfig, ConfigError, field_help, nested
from rac.data.config import DataConfig


@dataclass
class ElasticsearchConfig:
    """Connection and index settings of the Elasticsearch backend.

    Credentials are never written in a config: the config names the environment variables
    that hold them, so resolved configs and logs can be shared.
    """

    url: str | None = field_help(
        None, help="Elasticsearch URL, e.g. http://127.0.0.1:9200. Unset: the embedded BM25 backend is used.")
    index_name: str = field_help("rac-passages", help="Index holding the passage corpus.")
    number_of_shards: int = field_help(1, help="Primary shards of the index.")
    analyzer: str = field_help("standard", help="Built-in analyzer type of the text field (standard, english, ...).")
    request_timeout: float = field_help(30.0, help="Seconds before one request times out.")
    max_retries: int = field_help(3, help="Retries of a request after a connection error, timeout or 429/5xx.")
    retry_backoff: float = field_help(0.5, help="First retry delay in seconds; doubles on each retry.")
    bulk_chunk_size: int = field_help(500, help="Documents per bulk request.")
    msearch_batch_size: int = field_help(64, help="Searches per msearch request.")
    api_key_env: str = field_help("RAC_ES_API_KEY", help="Environment variable holding an API key (optional).")
    username_env: str = field_help("RAC_ES_USERNAME", help="Environment variable holding a basic-auth user.")
    password_env: str = field_help("RAC_ES_PASSWORD", help="Environment variable holding a basic-auth password.")
    verify_certs: bool = field_help(True, help="Verify the server's TLS certificate (https URLs).")
    ca_certs: str | None = field_help(None, help="CA bundle for TLS verification.")

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"elasticsearch.url must start with http:// or https://, got {self.url!r}")
        for name in ("number_of_shards", "bulk_chunk_size", "msearch_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"elasticsearch.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.request_timeout <= 0 or self.retry_backoff < 0:
            raise ConfigError("elasticsearch.max_retries and retry_backoff must be >= 0, request_timeout > 0")


@dataclass
class RetrieverConfig:
    """Which BM25 backend, its parameters, and limits on queries."""

    top_k: int = field_help(5, help="Passages retrieved per query.")
    k1: float = field_help(1.2, help="BM25 k1 (term-frequency saturation). Elasticsearch's default is 1.2.")
    b: float = field_help(0.75, help="BM25 b (length normalisation). Elasticsearch's default is 0.75.")
    max_query_chars: int = field_help(1000, help="Longer queries are rejected as error rows.")
    index_dir: str = field_help(
        "outputs/index/bm25", storage="path",
        help="Embedded backend: directory of the BM25 index (written by jobs.index), on the storage root.")
    elasticsearch: ElasticsearchConfig = nested(ElasticsearchConfig, "Elasticsearch backend settings.")

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if self.k1 < 0:
            raise ConfigError(f"k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ConfigError(f"b must be in [0, 1], got {self.b}")
        if self.max_query_chars < 1:
            raise ConfigError(f"max_query_chars must be at least 1, got {self.max_query_chars}")

    @property
    def backend(self) -> str:
        return "elasticsearch" if self.elasticsearch.url else "embedded"


@dataclass
class IndexConfig:
    """``python -m jobs.index``: build the passage corpus and index it."""

    data: DataConfig = nested(DataConfig, "Records and corpus to index.")
    retriever: RetrieverConfig = nested(RetrieverConfig, "Backend to index into.")
    pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of the Elasticsearch bulk indexers.")
    output_dir: str = field_help("outputs/index", storage="path",
                                 help="Where the corpus, index errors and run info go.")
    recreate: bool = field_help(True, help="Delete and recreate an existing index of the same name.")


@dataclass
class RetrieveConfig:
    """``python -m jobs.retrieve``: BM25 passages for every query, on a Ray Data actor pool."""

    data: DataConfig = nested(DataConfig, "Records whose queries are retrieved for.")
    retriever: RetrieverConfig = nested(RetrieverConfig, "Backend to search.")
    pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of the retrieval stage.")
    output_dir: str = field_help("outputs/retrieve", storage="path",
                                 help="Where the Parquet parts (retrieved/) and run info go.")
    resume: bool = field_help(
        True, help="A rerun into the same output_dir skips the ids already written with the same settings, data "
                   "and index, and searches again the rows the server failed; false deletes them and starts over.")
    show: int = field_help(3, help="Queries printed beside their passages at the end (0: none).")
