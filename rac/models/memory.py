"""The memory plan: what one GPU holds in each stage, estimated from the model's shape before any work.

Every stage that runs on GPUs (training, negatives, evaluation, serving) builds a
:class:`StagePlan` from its own config (``memory_plan`` of :mod:`rac.training.memory`,
:mod:`rac.decoding.memory`, :mod:`rac.evaluation.memory`, :mod:`rac.serving.memory`) and
refuses to start when it cannot fit (:func:`check_plan`), naming the numbers and the settings
that would make it fit. ``python -m jobs.plan --config <pipeline config>`` prints the same
plans for every stage of a pipeline (:mod:`rac.plan`).

**The model's shape** (:func:`model_shape`) comes from a ``config.json`` alone: transformers'
``AutoConfig`` builds the model on the ``meta`` device (no weights, no memory), which counts its
parameters exactly (tied embeddings once) and finds its largest layer. A pipeline whose base
model lives on the cluster's storage names a shape file instead (``configs/models/*.json``,
``sft.model.shape``).

**Where the numbers come from.** All figures are bytes on one GPU; ``GB`` is 10^9 bytes, the
unit GPU vendors use.

- *Training model states* (weights, gradients, optimizer state): DeepSpeed's own estimators,
  ``estimate_zero2_model_states_mem_needs`` (ZeRO 1 and 2, from ``stage_1_and_2``, whose optimizer
  serves both stages) and ``estimate_zero3_model_states_mem_needs`` (ZeRO 3), called with the
  trainable parameters, the data-parallel workers and the configured offload
  (:func:`model_states_bytes`). They count 16-bit weights and gradients plus an fp32 master copy
  and AdamW's two fp32 moments (2 + 18 bytes per parameter, the 18 sharded over the workers).
  ZeRO 0 (plain data parallel, no DeepSpeed) is the ZeRO-2 estimator on one GPU: nothing is
  sharded, and its 20 bytes per parameter are the fp32 weights the optimizer updates in place,
  their fp32 gradients and AdamW's two moments (16 bytes), plus the fp32 gradient buckets of
  DDP's all-reduce (4 bytes; ``gradient_as_bucket_view`` is off). Training in float32 under
  DeepSpeed holds no separate master copy, so there the estimators count 4 bytes a parameter
  more than the run holds: an upper bound.
  LoRA: the frozen base weights are held in the compute dtype (the training loader's rule,
  :func:`rac.training.worker.weights_dtype`), sharded over the workers under ZeRO 3 (none on the
  GPU when parameters are offloaded), and only the adapters go through the estimators.
- *Activations* (:func:`activation_bytes`): what autograd keeps for the backward pass of a
  Llama-style decoder layer (attention and a gated MLP, two RMSNorms), per token, with
  ``b`` the bytes of the compute dtype, ``h`` hidden, ``kv`` the key/value width
  (KV heads x head dim) and ``i`` the MLP width::

      per layer and token = 2 (4h + b h)     two RMSNorms: their float32 input and their output
                          + b (2h + 2 kv)    q, k, v and the attention output
                          + b h              sdpa / flash attention: the kernel's output (they
                                             keep no seq x seq scores)
                          + 2 b a s          eager attention instead: scores and softmax (a heads,
                                             s the row length)
                          + 4 b i            gate, up, act(gate), act(gate) * up

  times the layers and the tokens of a micro-batch, plus the embedding output and the final
  norm. With gradient checkpointing, each layer keeps only its input (``b h`` per token) and one
  layer is recomputed at a time. A preference batch holds the chosen and the rejected rows (2x
  the rows). Checked against what autograd keeps on a small Llama on CPU
  (``tests/models/test_memory_measured.py``: within 10%, sdpa and eager). The LM head runs on
  the answer tokens only, in vocabulary tiles (:mod:`rac.training.forward`):
  ``answer tokens x min(vocab, 32768) x 4 bytes x 2``.
- *The reference model* of the joint objective when ``precompute_ref_logps`` is off: its
  weights in the compute dtype (sharded under ZeRO 3), forward only.
- *Inference* (negatives, evaluation, serving): the weights in the resolved dtype, the KV cache
  ``2 x layers x kv x b`` per token for ``batch x (prompt tokens + new tokens)``, and the prefill's
  working set (one layer's activations for the batch, :func:`prefill_bytes`). Actors that reserve a
  fraction of a GPU share it: ``floor(1 / num_gpus)`` of them count on one GPU.

**What fits.** A plan fits when its estimate is at most :data:`USABLE_FRACTION` of the GPU's
memory: the CUDA context, NCCL's buffers and the allocator's fragmentation take the rest.

**The GPU's size** (:func:`gpu_memory`): the ``gpu_memory_gb`` key of the stage's resources when
set; else the ``accelerator_type:*`` resources Ray reports for the running cluster's GPU nodes
(the Ray launcher and ``ray start`` set them), mapped through :data:`GPU_MEMORY_GB` (the smallest
when there are several; ``A100``, which Ray gives both A100 sizes, as 40 GB); else the GPU of
this process. When none is known (an autoscaling cluster whose GPU nodes are not up yet), the
plan is logged and not checked: set ``gpu_memory_gb``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from rac.config import ConfigError

logger = logging.getLogger(__name__)

GB = 10**9
#: Share of a GPU's memory a plan may fill (the CUDA context, NCCL buffers and fragmentation take the rest).
USABLE_FRACTION = 0.9
#: Vocabulary columns per tile of the training LM head (rac.training.forward.VOCAB_CHUNK, TRL's default).
LM_HEAD_TILE = 32768

#: Memory of one GPU in GB, by the accelerator type Ray reports (``ray.util.accelerators``).
#: ``A100`` is either size; the smaller is assumed (set gpu_memory_gb: 80 for the 80 GB card).
GPU_MEMORY_GB: dict[str, float] = {
    "T4": 16, "V100": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100": 40, "A100-40G": 40, "A100-80G": 80,
    "H100": 80, "H200": 141, "H20": 96, "B200": 180, "RTX-PRO-6000": 96,
    "AMD-Instinct-MI300X-OAM": 192,
}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs to know of a model, read from its ``config.json``."""

    name: str
    params: int
    largest_layer_params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype: str
    #: ``(module name, in features, out features, count)`` of every linear layer kind (for LoRA).
    linears: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def lora_params(self, target_modules: Sequence[str], r: int) -> int:
        """Parameters of rank-``r`` LoRA adapters on the linear layers named ``target_modules``."""
        return sum(r * (fan_in + fan_out) * n for name, fan_in, fan_out, n in self.linears if name in target_modules)


def _config_dict(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, dict):
        return dict(source), str(source.get("_name_or_path") or source.get("model_type", "model"))
    path = Path(source)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path} holds no config.json (a model directory) and is not a shape file; the memory "
                          f"plan needs the model's config.json (e.g. configs/models/llama-3.1-8b.json)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not JSON ({e})") from None
    return data, (path.name if path.is_dir() else path.stem)


def model_shape(source: str | Path | dict[str, Any]) -> ModelShape:
    """The shape of the causal LM a ``config.json`` describes (a model directory, the file, or
    its content), counted on the ``meta`` device: no weights are read or allocated."""
    data, name = _config_dict(source)
    return _shape(json.dumps(data, sort_keys=True), name)


@cache
def _shape(config_json: str, name: str) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"model {name}: its config.json has no model_type; it cannot be planned")
    data.pop("architectures", None)
    try:
        config = AutoConfig.for_model(model_type, **data)
    except ValueError as e:
        raise ConfigError(f"model {name}: {e}") from None
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:  # an encoder (a scorer's NLI or embedding model, the detector)
            from transformers import AutoModel

            model = AutoModel.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    # DeepSpeed's "largest layer" (stage3.model_to_params): the most parameters one module holds itself.
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    linears: dict[tuple[str, int, int], int] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = (module_name.rsplit(".", 1)[-1], module.in_features, module.out_features)
            linears[key] = linears.get(key, 0) + 1
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = str(getattr(config, "dtype", None) or data.get("torch_dtype") or "float32").replace("torch.", "")
    return ModelShape(
        name=name, params=params, largest_layer_params=largest, layers=text.num_hidden_layers,
        hidden=text.hidden_size, heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim, intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab=text.vocab_size, dtype=dtype if dtype in DTYPE_BYTES else "float32",
        linears=tuple((n, i, o, c) for (n, i, o), c in sorted(linears.items())))


# ----------------------------------------------------------------------------- the estimates


def model_states_bytes(trainable: int, largest_layer: int, zero_stage: int, workers: int,
                       offload_optimizer: bool = False, offload_param: bool = False) -> int:
    """Per-GPU bytes of weights, gradients and optimizer state of ``trainable`` parameters, from
    DeepSpeed's own estimators (ZeRO 0 as the ZeRO-2 estimator on one GPU: see the module doc)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if trainable == 0:
        return 0
    if zero_stage == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            trainable, largest_layer, num_gpus_per_node=workers, num_nodes=1, cpu_offload=offload_optimizer,
            cpu_offload_params=offload_param, zero_init=True)
        return int(gpu)
    _, gpu = estimate_zero2_model_states_mem_needs(
        trainable, num_gpus_per_node=workers if zero_stage else 1, num_nodes=1,
        cpu_offload=offload_optimizer and zero_stage > 0)
    return int(gpu)


def _layer_bytes_per_token(shape: ModelShape, b: int, row_tokens: int, attention: str) -> int:
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    per = 2 * (4 * h + b * h) + b * (2 * h + 2 * kv) + 4 * b * i
    if attention == "eager":
        per += 2 * b * shape.heads * row_tokens
    else:
        per += b * h  # the fused kernel's output, which its backward keeps
    return per


def activation_bytes(shape: ModelShape, rows: int, row_tokens: int, dtype: str, checkpointing: bool,
                     attention: str = "sdpa") -> int:
    """Bytes autograd keeps for the backward pass of ``rows`` rows of ``row_tokens`` tokens (module doc)."""
    b = DTYPE_BYTES[dtype]
    tokens = rows * row_tokens
    layer = _layer_bytes_per_token(shape, b, row_tokens, attention) * tokens
    layers = shape.layers * b * shape.hidden * tokens + layer if checkpointing else shape.layers * layer
    return layers + b * shape.hidden * tokens + (4 * shape.hidden + b * shape.hidden) * tokens


def lm_head_bytes(shape: ModelShape, labelled_tokens: int) -> int:
    """The training LM head's float32 logits and their gradient, one vocabulary tile at a time."""
    return labelled_tokens * min(shape.vocab, LM_HEAD_TILE) * 4 * 2


def weights_bytes(shape: ModelShape, dtype: str) -> int:
    return shape.params * DTYPE_BYTES[dtype]


def kv_cache_bytes(shape: ModelShape, dtype: str, rows: int, tokens: int) -> int:
    """Keys and values of every layer for ``rows`` sequences of ``tokens`` tokens."""
    return 2 * shape.layers * shape.kv_width * DTYPE_BYTES[dtype] * rows * tokens


def prefill_bytes(shape: ModelShape, dtype: str, rows: int, prompt_tokens: int) -> int:
    """Working set of a prefill: one layer's activations for the batch (no autograd: nothing is kept
    across layers) and the last position's float32 logits."""
    b = DTYPE_BYTES[dtype]
    return _layer_bytes_per_token(shape, b, prompt_tokens, "sdpa") * rows * prompt_tokens + rows * shape.vocab * 4


def inference_items(shape: ModelShape, dtype: str, rows: int, prompt_tokens: int, new_tokens: int,
                    label: str = "") -> list[tuple[str, int]]:
    """``(what, bytes)`` of one model generating for ``rows`` prompts: weights, KV cache, prefill."""
    at = f" ({label})" if label else ""
    return [(f"weights{at} {_params(shape.params)} x {DTYPE_BYTES[dtype]} B ({dtype})", weights_bytes(shape, dtype)),
            (f"KV cache{at} {rows} x {prompt_tokens + new_tokens} tok",
             kv_cache_bytes(shape, dtype, rows, prompt_tokens + new_tokens)),
            (f"prefill{at}", prefill_bytes(shape, dtype, rows, prompt_tokens))]


def actors_per_gpu(num_gpus: float) -> int:
    """Actors Ray may place on one GPU when each reserves ``num_gpus`` of one."""
    return max(1, math.floor(1 / num_gpus + 1e-9)) if 0 < num_gpus < 1 else 1


def planned_dtype(dtype: str, use_gpu: bool, stored: str | None) -> str:
    """``dtype`` resolved as the stage will resolve it (:func:`rac.models.factory.resolve_dtype`); planned
    away from the GPU, ``auto`` assumes a GPU with bfloat16 (one without gets float16: the same bytes)."""
    from rac.models.factory import resolve_dtype

    if use_gpu and dtype == "auto":
        import torch

        if not torch.cuda.is_available():
            return "float32" if stored == "float32" else "bfloat16"
    return resolve_dtype(dtype, use_gpu, stored)


# ----------------------------------------------------------------------------- the plan


@dataclass
class StagePlan:
    """What one GPU (or, for a stage on CPU, one process) of a stage holds, and whether it fits.

    ``items`` are ``(what, bytes)``; ``gpu_gb`` is None on CPU or where the GPU's size is
    unknown; ``suggestions`` are ``(settings, estimate in bytes)`` that would fit, found by
    :func:`fitting_changes`.
    """

    stage: str
    runs_on: str
    items: list[tuple[str, int]]
    use_gpu: bool
    gpu_gb: float | None = None
    gpu_source: str = ""
    suggestions: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.items)

    @property
    def usable(self) -> float | None:
        return None if self.gpu_gb is None else self.gpu_gb * GB * USABLE_FRACTION

    @property
    def checked(self) -> bool:
        return self.use_gpu and self.gpu_gb is not None

    @property
    def fits(self) -> bool:
        return not self.checked or self.total <= self.usable  # type: ignore[operator]

    def verdict(self) -> str:
        if not self.use_gpu:
            return "CPU: not checked"
        if self.gpu_gb is None:
            return "GPU size unknown: not checked"
        share = self.total / (self.gpu_gb * GB)
        return f"fits ({share:.0%} of the GPU)" if self.fits else f"DOES NOT FIT ({share:.0%} of the GPU)"

    def row(self) -> str:
        """One row of :func:`plan_table`."""
        held = ", ".join(f"{what} {gb(b)}" for what, b in self.items)
        gpu = "-" if not self.use_gpu else (f"{self.gpu_gb:g} GB ({self.gpu_source})" if self.gpu_gb else "unknown")
        return f"| {self.stage} | {self.runs_on} | {held} | **{gb(self.total)}** | {gpu} | {self.verdict()} |"

    def refusal(self, key: str) -> str:
        """The message of a plan that does not fit; ``key`` names the GPU-size setting."""
        fixes = "; ".join(f"{what} ({gb(b)})" for what, b in self.suggestions) or \
            "none of the single changes tried is enough; combine them, or use a GPU with more memory"
        return (f"{self.stage} does not fit the GPU: the memory plan needs {gb(self.total)} per GPU "
                f"({', '.join(f'{w} {gb(b)}' for w, b in self.items)}), and a {self.gpu_gb:g} GB GPU "
                f"({self.gpu_source}; {key}) leaves {gb(self.usable or 0)} usable "
                f"({USABLE_FRACTION:.0%}). Settings that fit: {fixes}")


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


TABLE_HEADER = ("| stage | runs on | what one GPU holds | estimate | GPU | verdict |\n"
                "|---|---|---|---|---|---|")


def plan_table(plans: Sequence[StagePlan]) -> str:
    """The plans as a Markdown table (what ``python -m jobs.plan`` prints)."""
    return "\n".join([TABLE_HEADER, *(p.row() for p in plans)])


def gpu_memory(configured: float | None) -> tuple[float | None, str]:
    """``(GB, where it came from)`` of one GPU (module doc); ``(None, "unknown")`` when nothing says."""
    if configured is not None:
        return configured, "config"
    import sys

    ray = sys.modules.get("ray")  # only a process that already uses Ray asks it
    if ray is not None and ray.is_initialized():
        known = {k.split(":", 1)[1]: GPU_MEMORY_GB.get(k.split(":", 1)[1])
                 for k in ray.cluster_resources() if k.startswith("accelerator_type:")}
        sizes = {t: s for t, s in known.items() if s is not None}
        if sizes:
            kind = min(sizes, key=sizes.__getitem__)
            return sizes[kind], f"Ray: accelerator_type {kind}"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GB, "this process's GPU"
    return None, "unknown"


def fitting_changes(estimate: Callable[[Any], int], cfg: Any, usable: float,
                    candidates: Sequence[tuple[str, Any]], bigger_gpu_from: float) -> list[tuple[str, int]]:
    """The ``candidates`` (``(settings, changed config)``) whose ``estimate`` fits in ``usable`` bytes,
    and the smallest GPU of :data:`GPU_MEMORY_GB` that holds ``cfg`` as it is."""
    out = [(what, est) for what, changed in candidates if (est := estimate(changed)) <= usable]
    need = estimate(cfg)
    bigger = sorted({s for s in GPU_MEMORY_GB.values() if s > bigger_gpu_from and need <= s * GB * USABLE_FRACTION})
    if bigger:
        kinds = [k for k, s in GPU_MEMORY_GB.items() if s == bigger[0]]
        out.append((f"a GPU of {bigger[0]:g} GB or more ({', '.join(kinds)})", need))
    return out


def inference_candidates(cfg: Any, stored_dtype: str, batch_key: str, batch: int) -> list[tuple[str, Any]]:
    """Single changes that lower an inference actor's memory: bfloat16 where it would run float32, and
    each halving of its batch (``batch_key``, dotted)."""
    out = [("dtype: bfloat16", replace(cfg, dtype="bfloat16"))] \
        if planned_dtype(cfg.dtype, True, stored_dtype) == "float32" else []
    while batch > 1:
        batch //= 2
        out.append((f"{batch_key}: {batch}", replace(cfg, **{batch_key: batch})))
    return out


def check_plan(plans: StagePlan | Sequence[StagePlan], key: str) -> None:
    """Log each plan; raise :class:`ConfigError` (:meth:`StagePlan.refusal`) for the first that does not
    fit. ``key`` names the setting of the GPU's size, for the message."""
    for plan in [plans] if isinstance(plans, StagePlan) else plans:
        if plan.use_gpu and plan.gpu_gb is None:
            logger.warning("memory plan of %s: %s per GPU; the GPU's size is unknown, so it is not checked (set %s)",
                           plan.stage, gb(plan.total), key)
            continue
        if not plan.fits:
            raise ConfigError(plan.refusal(key))
        if plan.use_gpu:
            logger.info("memory plan of %s: %s per GPU of %g GB, %s", plan.stage, gb(plan.total), plan.gpu_gb,
                        plan.verdict())


def replace(cfg: Any, **changes: Any) -> Any:
    """``cfg`` with dotted ``changes`` (``{"deepspeed.zero_stage": 3}``), nested sections copied."""
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **top)


def cpu_allocations(fn: Callable[[], Any]) -> tuple[int, int]:
    """``(peak, end)`` bytes the CPU allocator holds while ``fn`` runs, over what it held before:
    every allocation and free torch's profiler records, summed in time order (the measured side
    of the plan's estimates on CPU, in the tests and ``bench/memory_plan.py``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak, now
