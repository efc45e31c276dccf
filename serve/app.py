"""The Ray Serve application: ``build_app(args) -> Application`` (``serve/config.yaml``).

Two deployments:

- ``ClarifyIngress`` (FastAPI, ``rac.serving.http``): API key, limits, validation, BM25
  retrieval through the configured backend, the grounded prompt, the grounding score;
- ``QuestionGeneratorDeployment``: the model, loaded once per replica; concurrent requests
  are gathered by ``@serve.batch`` and generated greedily, up to ``max_batch_size`` prompts
  in one left-padded ``generate`` (``rac.serving.generator``).

Both take replicas, resources, ``max_ongoing_requests`` and ``autoscaling_config`` from
:class:`rac.serving.config.ServeConfig`, built from the ``args`` of the Serve config.
All logic lives in ``rac.serving``; this module only wires it into Serve.
"""

from __future__ import annotations

import copy
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application, Deployment
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from rac.config import ConfigError, from_dict
from rac.models.factory import check_model_dir
from rac.models.memory import check_plan
from rac.serving.config import ServeConfig
from rac.serving.generator import BatchStats, GenerationScheduler, QuestionGenerator
from rac.serving.memory import memory_plan, uses_gpu
from rac.serving.service import ServingError
from rac.storage import resolve_storage, storage_root


def _log_rac_to_serve_logs() -> None:
    """Send the library's ``rac`` loggers to this replica's Serve log file.

    Serve configures only the ``ray.serve`` logger in a replica; without this, messages of
    ``rac.serving`` (auth source, backend failures with their details) would be dropped.
    """
    serve_logger = logging.getLogger("ray.serve")
    rac_logger = logging.getLogger("rac")
    rac_logger.setLevel(logging.INFO)
    for handler in serve_logger.handlers:
        if handler not in rac_logger.handlers:
            rac_logger.addHandler(handler)


@dataclass
class _Generation:
    prompt: str
    max_new_tokens: int


@serve.deployment(name="QuestionGenerator")
class QuestionGeneratorDeployment:
    """One model per replica; concurrent ``generate`` calls are batched.

    ``@serve.batch`` gathers concurrent calls (waiting up to ``batch_wait_timeout_s`` for
    company when the model is idle); the :class:`GenerationScheduler` then runs one
    ``generate`` at a time over up to ``max_batch_size`` of everything pending, so batches
    formed while the model was busy are merged instead of queued one behind another.
    """

    def __init__(self, cfg: ServeConfig):
        _log_rac_to_serve_logs()
        g = self.batching = cfg.generator
        self.generator = QuestionGenerator(cfg.model_path, dtype=cfg.dtype, device=cfg.device,
                                           num_gpus=g.deployment.num_gpus, attn_implementation=cfg.attn_implementation,
                                           torch_threads=g.torch_threads)
        # The decorator's arguments are fixed when the class is defined; the configured
        # values replace them here, before the first request creates the batch queue.
        self.generate_batch.set_max_batch_size(g.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(g.batch_wait_timeout_s)
        # One worker thread: generation runs off the event loop, which keeps accepting
        # requests into the next batch meanwhile; calls never overlap.
        self.scheduler = GenerationScheduler(
            self.generator.generate, g.max_batch_size, ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate"),
            BatchStats(), delay_s=g.test_delay_s)

    async def generate(self, prompt: str, max_new_tokens: int) -> str:
        """The clarifying question for one prompt (batched with concurrent calls)."""
        return await self.generate_batch(_Generation(prompt, max_new_tokens))

    # max_concurrent_batches only caps batches handed to the scheduler, which serialises and
    # merges them; a low cap would hold formed batches back instead of letting them merge.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=1024)
    async def generate_batch(self, requests: list[_Generation]) -> list[str]:
        return await self.scheduler.submit([r.prompt for r in requests], [r.max_new_tokens for r in requests])

    def batch_stats(self) -> dict[str, Any]:
        return {**self.scheduler.stats.snapshot(), "max_batch_size": self.batching.max_batch_size,
                "batch_wait_timeout_s": self.batching.batch_wait_timeout_s}

    def ready(self) -> bool:
        return True


@serve.deployment(name="ClarifyIngress")
@serve.ingress()
class ClarifyIngress:
    """HTTP ingress: FastAPI app of ``rac.serving.http`` around a ``ClarifyService``."""

    def __init__(self, cfg: ServeConfig, generator: DeploymentHandle):
        from rac.models.factory import load_tokenizer
        from rac.retrieval import make_retriever
        from rac.serving.auth import load_api_key
        from rac.serving.service import ClarifyService

        _log_rac_to_serve_logs()
        self.cfg = cfg
        self.generator = generator
        self.api_key = load_api_key(cfg.auth)
        self.service = ClarifyService(cfg, make_retriever(cfg.retriever), load_tokenizer(cfg.model_path),
                                      self._generate, detector=load_detector(cfg))

    async def _generate(self, prompt: str, max_new_tokens: int) -> str:
        try:
            return await self.generator.generate.remote(prompt, max_new_tokens)
        except BackPressureError as e:
            raise ServingError(503, "the generator is at capacity; retry later",
                               retry_after_s=max(1.0, e.retry_after_s or 1.0)) from None
        except (DeploymentUnavailableError, RayActorError):
            # No replica, or the one serving this request died (Serve starts another).
            raise ServingError(503, "the generator is unavailable; retry later", retry_after_s=5) from None

    async def _stats(self) -> dict[str, Any]:
        return await self.generator.batch_stats.remote()

    async def _check_generator(self) -> Any:
        return await self.generator.ready.remote()

    def __serve_build_asgi_app__(self) -> Any:
        from rac.serving.http import create_app

        return create_app(self.cfg, self.service, api_key=self.api_key, stats=self._stats,
                          check_generator=self._check_generator)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def load_detector(cfg: ServeConfig) -> Any:
    """The configured unsupported-span detector, or None; a broken one stops the replica naming it."""
    if not cfg.detector.path:
        return None
    import torch

    from rac.detector import UnsupportedSpanDetector

    torch.set_num_threads(cfg.detector.torch_threads)
    detector = UnsupportedSpanDetector(cfg.detector.path, precision=cfg.detector.precision, key="detector.path")
    logging.getLogger("rac.serving").info("unsupported-span detector %s loaded (%s)", cfg.detector.path,
                                          cfg.detector.precision)
    return detector


def check_paths(cfg: ServeConfig) -> None:
    """Fail at build time, before any replica starts, when the model or index is missing, or the
    generator's memory plan does not fit its GPU."""
    model = check_model_dir(cfg.model_path, "model_path", "run `make run` first (it trains the RAC model "
                                                          "serve/config.yaml serves), or point model_path at "
                                                          "another exported model")
    if not any((model / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ConfigError(f"model_path {model} has no tokenizer files; export the tokenizer with the model")
    positions = json.loads((model / "config.json").read_text()).get("max_position_embeddings")
    needed = cfg.generator.max_prompt_tokens + cfg.limits.max_new_tokens
    if positions and needed > positions:
        raise ConfigError(f"generator.max_prompt_tokens + limits.max_new_tokens = {needed} exceeds the model's "
                          f"max_position_embeddings ({positions}); lower one of them")
    if uses_gpu(cfg):
        check_plan(memory_plan(cfg), "generator.deployment.gpu_memory_gb")
    if cfg.detector.path:
        from rac.detector import check_detector_dir

        check_detector_dir(cfg.detector.path, "detector.path")
    if cfg.retriever.backend == "embedded":
        from rac.retrieval.embedded import PARAMS_FILE

        if not (Path(cfg.retriever.index_dir) / PARAMS_FILE).is_file():
            raise ConfigError(f"retriever.index_dir {cfg.retriever.index_dir} holds no embedded BM25 index; run "
                              f"`make run` first (it builds the index serve/config.yaml names), or "
                              f"`python -m jobs.index --config configs/index.yaml`, or set "
                              f"retriever.elasticsearch.url")


def build_app(args: dict[str, Any] | ServeConfig) -> Application:
    """The Serve application from the ``args`` of a Serve config (``serve/config.yaml``).

    Parameters
    ----------
    args
        A mapping of :class:`rac.serving.config.ServeConfig` keys (nested sections as
        mappings), or the config itself; unknown keys, impossible values, and a missing
        model or index raise :class:`rac.config.ConfigError` before any replica starts.

    Returns
    -------
    The bound application: ``ClarifyIngress`` calling ``QuestionGenerator``.
    """
    cfg = args if isinstance(args, ServeConfig) else from_dict(ServeConfig, dict(args or {}))
    # Replicas may start in another working directory than the one the app is built in.
    cfg = resolve_storage(copy.deepcopy(cfg), storage_root())
    check_paths(cfg)
    ingress, generator = deployments(cfg)
    return ingress.bind(cfg, generator.bind(cfg))


def deployments(cfg: ServeConfig) -> tuple[Deployment, Deployment]:
    """``(ClarifyIngress, QuestionGenerator)`` with the replicas and resources of ``cfg``."""
    return (ClarifyIngress.options(**cfg.ingress.deployment.to_serve()),
            QuestionGeneratorDeployment.options(**cfg.generator.deployment.to_serve()))
