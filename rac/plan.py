"""The memory plan of a whole pipeline: every GPU stage's estimate, from the configs alone
(``python -m jobs.plan``). Each stage's own preflight runs the same plan
(:mod:`rac.models.memory`) before it starts work."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from rac.config import ConfigError, from_dict, load_yaml
from rac.evaluation.memory import memory_plan as evaluate_plan
from rac.models.memory import ModelShape, StagePlan, check_plan, model_shape
from rac.pipeline import PipelineConfig
from rac.serving.config import ServeConfig
from rac.serving.memory import memory_plan as serve_plan
from rac.training.memory import memory_plan as training_plan

logger = logging.getLogger(__name__)


def uses_gpus(cfg: PipelineConfig) -> bool:
    """Whether any stage of ``cfg`` runs on GPUs (training workers, or actor pools that reserve them)."""
    return (cfg.sft.scaling.use_gpu or cfg.rac.scaling.use_gpu or cfg.negatives.pool.num_gpus > 0
            or cfg.evaluate.pool.num_gpus > 0 or cfg.evaluate.score_pool.num_gpus > 0)


def pipeline_preflight(cfg: PipelineConfig) -> None:
    """What the pipeline's door checks before any work (a refusal exits 2): the base model
    (:meth:`PipelineConfig.preflight`), then, where a stage runs on GPUs, every stage's memory
    plan, as each stage's own preflight checks it again when it starts."""
    cfg.preflight()
    if not uses_gpus(cfg):
        return
    try:
        plans = pipeline_plans(cfg)
    except ConfigError as e:  # the packaged model, not prepared yet: each stage checks its own plan
        logger.warning("memory plan not checked before the run: %s", e)
        return
    check_plan(plans, "gpu_memory_gb of the stage's resources")


def base_shape(cfg: PipelineConfig) -> ModelShape:
    """The base model's shape: its own config.json, else the shape file ``sft.model.shape`` names."""
    if (Path(cfg.base_model) / "config.json").is_file():
        return model_shape(cfg.base_model)
    if cfg.sft.model.shape:
        return model_shape(cfg.sft.model.shape)
    raise ConfigError(f"base_model {cfg.base_model} holds no config.json yet; set sft.model.shape to the model's "
                      f"config.json (e.g. configs/models/llama-3.1-8b.json) to plan without the weights")


def serve_config(path: str | Path) -> ServeConfig:
    """The first application's ``args`` of a Serve config file, or of a KubeRay RayService manifest's
    ``serveConfigV2``, as a :class:`ServeConfig`."""
    data = load_yaml(path)
    if data.get("kind") == "RayService":
        data = yaml.safe_load(data["spec"]["serveConfigV2"])
    apps = data.get("applications") or []
    if not apps or "args" not in apps[0]:
        raise ConfigError(f"{path} is neither a Serve config nor a RayService with applications[0].args")
    return from_dict(ServeConfig, apps[0]["args"], prefix="serve.")


def pipeline_plans(cfg: PipelineConfig, serve: ServeConfig | None = None) -> list[StagePlan]:
    """The memory plan of every model stage of ``cfg.stages`` (and of serving, given its config).

    Every model of the pipeline has the base model's shape (the SFT and joint-objective stages
    export what they load); the evaluation's scorer models are read from their own directories.
    """
    shape = base_shape(cfg)
    stages: dict[str, Any] = cfg.stage_configs()
    plans: list[StagePlan] = []
    for name in cfg.stages:
        stage_cfg = stages.get(name)
        if name in ("sft_grounded", "sft_ungrounded", "train_rac"):
            plans.append(training_plan(stage_cfg, shape, stage=name))
        elif name == "negatives":
            from rac.decoding.memory import memory_plan as negatives_plan

            plans.append(negatives_plan(stage_cfg, shape, shape, stage=name))
        elif name == "evaluate":
            plans.extend(evaluate_plan(stage_cfg, [shape] * len(stage_cfg.systems), stage=name))
    if serve is not None:
        own = (Path(serve.model_path) / "config.json").is_file()
        plans.append(serve_plan(serve, model_shape(serve.model_path) if own else shape))
    return plans
