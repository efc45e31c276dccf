"""Config of the serving application (``serve/config.yaml`` ``args``, read by ``build_app``).

One dataclass tree, :class:`ServeConfig`, holds everything the Serve application needs:
the model directory, the retriever, the generator's batching, both deployments' replicas
and resources, request limits, timeouts and the optional API key. It is built from the
``args`` mapping of a Serve config file with :func:`rac.config.from_dict`, so unknown keys
and impossible values fail at ``serve run`` / ``serve deploy`` time with a message that
says what to change, before any replica starts.

Cluster-scoped HTTP settings (``http_options.host``, ``port``, ``request_timeout_s``) are
not here: Serve takes them from the top of the Serve config file, not from ``args``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rac.config import ConfigError, check_gpu_memory, field_help, gpu_memory_field, nested
from rac.models.factory import (
    Attention,
    Device,
    Dtype,
    attention_field,
    check_attention,
    check_device,
    dtype_field,
)
from rac.models.generation import check_lengths, max_new_tokens_field, max_prompt_tokens_field
from rac.retrieval.config import RetrieverConfig


@dataclass
class AutoscalingSection:
    """Serve ``autoscaling_config`` of one deployment (min == max: a fixed replica count)."""

    min_replicas: int = field_help(1, help="Replicas kept when idle (0 lets the deployment scale to zero).")
    max_replicas: int = field_help(1, help="Replicas the deployment may scale out to under load.")
    target_ongoing_requests: float = field_help(
        2.0, help="Ongoing requests per replica the autoscaler aims for; more scales out, fewer scales in.")
    upscale_delay_s: float = field_help(10.0, help="Seconds of sustained load before scaling out.")
    downscale_delay_s: float = field_help(300.0, help="Seconds of low load before scaling in.")

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"autoscaling.min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(f"autoscaling.max_replicas ({self.max_replicas}) must be >= 1 and >= "
                              f"min_replicas ({self.min_replicas})")
        if self.target_ongoing_requests <= 0:
            raise ConfigError(f"autoscaling.target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ConfigError("autoscaling.upscale_delay_s and downscale_delay_s must be >= 0")

    def to_serve(self) -> dict[str, Any]:
        """The ``autoscaling_config`` mapping Serve's deployment options take."""
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


@dataclass
class DeploymentSection:
    """Replicas, per-replica resources and request admission of one Serve deployment."""

    num_cpus: float = field_help(1.0, help="CPUs reserved per replica.")
    num_gpus: float = field_help(0.0, help="GPUs reserved per replica (0 on CPU-only machines).")
    memory_gb: float | None = field_help(None, help="Memory reserved per replica in GiB (None: no reservation).")
    gpu_memory_gb: float | None = gpu_memory_field()
    max_ongoing_requests: int = field_help(
        32, help="Requests one replica works on at once; the router queues the rest (max_queued_requests).")
    max_queued_requests: int = field_help(
        256, help="Requests waiting for a replica before new ones are refused with 503 (-1: no limit).")
    autoscaling: AutoscalingSection = nested(AutoscalingSection, "Replica count and autoscaling.")

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("num_cpus and num_gpus must be >= 0")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ConfigError(f"memory_gb must be > 0 or null, got {self.memory_gb}")
        check_gpu_memory(self.gpu_memory_gb, "gpu_memory_gb")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ConfigError(f"max_queued_requests must be -1 (no limit) or >= 1, got {self.max_queued_requests}")

    def to_serve(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``."""
        actor_options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            actor_options["memory"] = int(self.memory_gb * 1024**3)
        return {"ray_actor_options": actor_options, "max_ongoing_requests": self.max_ongoing_requests,
                "max_queued_requests": self.max_queued_requests, "autoscaling_config": self.autoscaling.to_serve()}


def _deployment(help: str, **defaults: Any) -> Any:
    """A :class:`DeploymentSection` field whose defaults differ from the class defaults."""
    autoscaling = defaults.pop("autoscaling", {})
    return dataclasses.field(
        default_factory=lambda: DeploymentSection(autoscaling=AutoscalingSection(**autoscaling), **defaults),
        metadata={"help": help})


@dataclass
class GeneratorConfig:
    """The generator deployment: one model per replica, requests batched with ``@serve.batch``."""

    max_batch_size: int = field_help(16, help="Prompts generated together in one batched generate call.")
    batch_wait_timeout_s: float = field_help(
        0.01, help="Seconds a request reaching an idle model waits for company before generating alone "
                   "(while the model is busy, arrivals join the next batch anyway).")
    max_new_tokens: int = max_new_tokens_field()
    max_prompt_tokens: int = max_prompt_tokens_field()
    torch_threads: int | None = field_help(
        None, help="torch intra-op threads per replica (None: what Ray sets from num_cpus).")
    test_delay_s: float = field_help(
        0.0, help="Testing only: seconds every batch waits before generating, to exercise timeouts. Keep 0.")
    deployment: DeploymentSection = _deployment(
        "Replicas and resources of the generator.", num_cpus=1.0, max_ongoing_requests=32, max_queued_requests=256,
        autoscaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16.0})

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"generator.max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"generator.batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        check_lengths(self.max_new_tokens, self.max_prompt_tokens, section="generator.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"generator.torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.test_delay_s < 0:
            raise ConfigError(f"generator.test_delay_s must be >= 0, got {self.test_delay_s}")
        # A replica that admits fewer requests than a batch holds can never fill a batch.
        if self.deployment.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(
                f"generator.deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must be at "
                f"least generator.max_batch_size ({self.max_batch_size}), or batches never fill; raise it "
                f"(twice the batch size lets the next batch form while one runs)")


@dataclass
class IngressConfig:
    """The HTTP ingress deployment: validation, auth, retrieval, prompt, call to the generator."""

    retrieval_timeout_s: float = field_help(
        5.0, help="Seconds a search may take before the request fails with 504.")
    generation_timeout_s: float = field_help(
        60.0, help="Seconds the generator may take (queueing included) before the request fails with 504.")
    readiness_timeout_s: float = field_help(2.0, help="Seconds /readyz waits for the generator and retriever.")
    retrieval_threads: int = field_help(
        8, help="Threads running searches; a hung backend can hold at most this many, later requests get 504.")
    shed_load: bool = field_help(
        True, help="Answer 503 with Retry-After at once when a request is expected to wait longer than "
                   "generation_timeout_s: the generations in flight and the measured time of one batch tell "
                   "(rac.serving.admission). false: queue every request; the late ones get 504 at the timeout.")
    generation_time_smoothing: float = field_help(
        0.3, help="Weight of the newest measured batch time in its moving average, in (0, 1]; higher follows a "
                  "change of load faster, lower is steadier.")
    deployment: DeploymentSection = _deployment(
        "Replicas and resources of the ingress.", num_cpus=0.5, max_ongoing_requests=128, max_queued_requests=512,
        autoscaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 32.0})

    def __post_init__(self) -> None:
        for name in ("retrieval_timeout_s", "generation_timeout_s", "readiness_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ingress.{name} must be > 0, got {getattr(self, name)}")
        if self.retrieval_threads < 1:
            raise ConfigError(f"ingress.retrieval_threads must be at least 1, got {self.retrieval_threads}")
        if not 0 < self.generation_time_smoothing <= 1:
            raise ConfigError(f"ingress.generation_time_smoothing must be in (0, 1], got "
                              f"{self.generation_time_smoothing}")


@dataclass
class LimitsConfig:
    """Bounds on one request (the query length bound is ``retriever.max_query_chars``)."""

    max_body_bytes: int = field_help(16384, help="Larger request bodies are refused with 413.")
    max_top_k: int = field_help(20, help="Largest top_k a request may ask for (422 above).")
    max_new_tokens: int = field_help(64, help="Largest max_new_tokens a request may ask for (422 above).")

    def __post_init__(self) -> None:
        if self.max_body_bytes < 256:
            raise ConfigError(f"limits.max_body_bytes must be at least 256, got {self.max_body_bytes}")
        if self.max_top_k < 1 or self.max_new_tokens < 1:
            raise ConfigError("limits.max_top_k and limits.max_new_tokens must be at least 1")


@dataclass
class AuthConfig:
    """Optional API key, from an environment variable or a mounted secret file (never from config)."""

    api_key_env: str = field_help(
        "RAC_SERVE_API_KEY", help="Environment variable holding the API key (unset or empty: no key from env).")
    api_key_file: str | None = field_help(
        None, storage="path", help="File holding the API key, e.g. a mounted Kubernetes secret; read at replica start.")
    required: bool = field_help(
        False, help="Refuse to start without a key (set true in production so a missing secret is loud).")
    open_paths: list[str] = field_help(
        ["/healthz", "/readyz"], help="Paths answered without the key: liveness and readiness probes (a "
                                      "Kubernetes httpGet probe cannot take a header from a Secret). [] "
                                      "puts every path behind the key.")

    def __post_init__(self) -> None:
        bad = [p for p in self.open_paths if not p.startswith("/")]
        if bad:
            raise ConfigError(f"auth.open_paths must be paths starting with '/', got {bad}")


@dataclass
class DetectorSection:
    """The optional unsupported-span detector (``jobs.train_detector``), run in the ingress."""

    path: str | None = field_help(
        None, storage="path",
        help="Exported detector directory (jobs.train_detector's <output_dir>/model). Unset: responses carry "
             "unsupported_spans and detector_support as null, and /readyz and the OpenAPI description say "
             "so. Set but missing or broken: the deploy stops naming it.")
    threshold: float | None = field_help(
        None, help="P(unsupported) at which a content word is returned as an unsupported span (None: the "
                   "threshold stored with the detector).")
    precision: Literal["float32", "bfloat16", "int8"] = field_help(
        "int8", help="Inference precision: int8 (dynamic quantization of the linear layers; about twice as fast "
                     "as float32 on CPU, probabilities within a few hundredths), float32 or bfloat16.")
    torch_threads: int = field_help(1, help="torch threads of the detector in each ingress replica.")

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"detector.threshold must be in (0, 1) or null, got {self.threshold}")
        if self.torch_threads < 1:
            raise ConfigError(f"detector.torch_threads must be at least 1, got {self.torch_threads}")


@dataclass
class ServeConfig:
    """``build_app`` args: everything the clarifying-question Serve application needs."""

    model_path: str = field_help(
        "outputs/demo/train_rac/model", storage="path",
        help="Hugging Face model directory (config.json + tokenizer) a training job exported; default: the RAC "
             "model `make run` trains. Relative paths (this one, the index, the key file, the detector) are "
             "resolved against the storage root: RAC_STORAGE in the app's runtime_env env_vars (on a cluster, "
             "the root the jobs wrote to), else the directory serve run/deploy builds the app in.")
    model_name: str | None = field_help(None, help="Name reported in responses (None: the model directory's name).")
    dtype: Dtype = dtype_field()
    device: Device = field_help(
        "auto", help="Device of the generator replicas' model: auto is cuda when generator.deployment.num_gpus > 0 "
                     "and a GPU is visible to the replica, else cpu; cuda refuses the deploy where no GPU is "
                     "visible.")
    attn_implementation: Attention = attention_field()
    retriever: RetrieverConfig = nested(RetrieverConfig, "BM25 backend (Elasticsearch when a URL is set).")
    generator: GeneratorConfig = nested(GeneratorConfig, "Generator deployment and batching.")
    ingress: IngressConfig = nested(IngressConfig, "Ingress deployment and timeouts.")
    limits: LimitsConfig = nested(LimitsConfig, "Bounds on one request.")
    auth: AuthConfig = nested(AuthConfig, "Optional API key.")
    detector: DetectorSection = nested(DetectorSection, "Optional unsupported-span detector.")

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ConfigError("model_path must name a Hugging Face model directory")
        check_device(self.device, self.generator.deployment.num_gpus, "generator.deployment.num_gpus")
        check_attention(self.attn_implementation, "attn_implementation")
        if self.limits.max_top_k < self.retriever.top_k:
            raise ConfigError(f"limits.max_top_k ({self.limits.max_top_k}) must be >= retriever.top_k "
                              f"({self.retriever.top_k}), the default a request gets")
        if self.limits.max_new_tokens < self.generator.max_new_tokens:
            raise ConfigError(f"limits.max_new_tokens ({self.limits.max_new_tokens}) must be >= "
                              f"generator.max_new_tokens ({self.generator.max_new_tokens}), the default")

    @property
    def served_model_name(self) -> str:
        return self.model_name or Path(self.model_path).name
