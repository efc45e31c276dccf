"""The whole method as one run: index -> retrieve (later stages join as they land).

Each stage writes into its own folder of ``run_dir`` with its resolved config and run info.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rac.config import ActorPoolConfig, ConfigError, field_help, nested
from rac.data.config import DataConfig
from rac.retrieval import IndexConfig, RetrieveConfig, RetrieverConfig, run_index, run_retrieve

logger = logging.getLogger(__name__)

STAGES = ("index", "retrieve")


@dataclass
class PipelineConfig:
    """``python -m jobs.pipeline``: every stage of RAC in order, into one run directory."""

    run_dir: str = field_help("outputs/demo", help="Directory of this run; each stage writes a subfolder.")
    stages: list[str] = field_help(list(STAGES), help=f"Stages to run, in order; any of {list(STAGES)}.")
    data: DataConfig = nested(DataConfig, "Records and corpus.")
    retriever: RetrieverConfig = nested(
        RetrieverConfig, "BM25 backend. The embedded index goes to <run_dir>/index/bm25.")
    index_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of Elasticsearch bulk indexing.")
    retrieve_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of retrieval.")
    show: int = field_help(5, help="Examples printed at the end.")

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")

    def stage_configs(self) -> dict[str, Any]:
        run_dir = Path(self.run_dir)
        retriever = dataclasses.replace(self.retriever, index_dir=str(run_dir / "index" / "bm25"))
        return {
            "index": IndexConfig(data=self.data, retriever=retriever, pool=self.index_pool,
                                 output_dir=str(run_dir / "index")),
            "retrieve": RetrieveConfig(data=self.data, retriever=retriever, pool=self.retrieve_pool,
                                       output_dir=str(run_dir / "retrieve"), show=self.show),
        }


RUNNERS = {"index": run_index, "retrieve": run_retrieve}


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the configured stages in order; returns each stage's summary."""
    stage_cfgs = cfg.stage_configs()
    summaries = {}
    for i, stage in enumerate(cfg.stages, start=1):
        logger.info("stage %d/%d: %s", i, len(cfg.stages), stage)
        summaries[stage] = RUNNERS[stage](stage_cfgs[stage])
    return summaries
