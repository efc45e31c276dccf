"""Model factory: any Hugging Face causal LM from a local directory, optional LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rac import machine
from rac.config import ConfigError, field_help, nested

logger = logging.getLogger(__name__)


#: Where ``python -m jobs.prepare_model`` writes the packaged SmolLM2-135M-Instruct (the default
#: base model); the only model directory a run writes for itself (:mod:`rac.models.prepare`).
PACKAGED_MODEL_DIR = "outputs/models/smollm2-135m-instruct"

#: The dtypes a model may be loaded and computed in (``auto``: see :func:`resolve_dtype`).
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
#: The torch devices an actor may run a model on (``auto``: see :func:`resolve_device`).
Device = Literal["auto", "cpu", "cuda"]
#: transformers' attention kernels a model may run with (``attn_implementation``).
Attention = Literal["sdpa", "eager", "flash_attention_2"]

#: What ``dtype: auto`` means, for every stage (the one rule; :func:`resolve_dtype`).
DTYPE_RULE = (
    "auto: inference (decoding, evaluation, serving) runs the model in its own dtype (config.json) where the "
    "device computes it natively: a bfloat16 model runs bfloat16 on GPUs that have it and float16 on those that "
    "do not, and float32 on CPUs without AVX512-BF16 or AMX; a float32 model runs float32. Training computes in "
    "bfloat16 mixed precision where the device has it, else float32.")


def dtype_field() -> Any:
    """The config field of an inference stage's model dtype (:data:`Dtype`, :data:`DTYPE_RULE`)."""
    return field_help("auto", help=f"Model dtype. {DTYPE_RULE}")


def attention_field() -> Any:
    """The config field of a model's attention kernel (:data:`Attention`)."""
    return field_help("sdpa", help="Attention kernel (transformers' attn_implementation): sdpa (torch's fused "
                                   "attention), eager, or flash_attention_2 (needs the flash-attn package and a GPU).")


def check_attention(value: str, key: str) -> None:
    """Refuse ``flash_attention_2`` where the flash-attn package is not installed, naming ``key``."""
    import importlib.util

    if value == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(f"{key} is flash_attention_2 but the flash-attn package is not installed; install it "
                          f"on the GPU nodes (pip install flash-attn) or set {key}: sdpa")


def device_field() -> Any:
    """The config field of the device an actor pool's models run on (:data:`Device`)."""
    return field_help("auto", help="auto: cuda when the actor pool reserves GPUs (num_gpus > 0) and one is "
                                   "visible, else cpu.")


@dataclass
class LoraConfig:
    """Optional LoRA adapters (PEFT) instead of full fine-tuning."""

    enabled: bool = field_help(False, help="Train LoRA adapters instead of all weights.")
    r: int = field_help(16, help="LoRA rank.")
    alpha: int = field_help(32, help="LoRA scaling alpha.")
    dropout: float = field_help(0.05, help="LoRA dropout.")
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "Module names that get adapters."})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be at least 1, got {self.r}")


@dataclass
class ModelConfig:
    """Which causal LM to load."""

    path: str = field_help(PACKAGED_MODEL_DIR, storage="path",
                           help="Local Hugging Face model directory (python -m jobs.prepare_model writes one).")
    dtype: Dtype = field_help(
        "auto", help="Compute precision of training: auto picks bfloat16 where the device supports it (CPUs with "
                     "AVX512-BF16 or AMX, recent GPUs), else float32; bf16/fp16 run as mixed precision. The weights "
                     "load in float32 where the optimizer updates them in place (full fine-tuning without "
                     "DeepSpeed) and in the compute dtype where it does not (LoRA's frozen base; DeepSpeed keeps "
                     "its own float32 copy). The exported model is written in the base model's dtype.")
    attn_implementation: Attention = attention_field()
    shape: str | None = field_help(
        None, help="A config.json of the model's architecture (e.g. configs/models/llama-3.1-8b.json) for the "
                   "memory plan (python -m jobs.plan), read when path holds no model yet: its weights live on "
                   "the cluster's storage. The model's own config.json wins where there is one.")
    lora: LoraConfig = nested(LoraConfig, "LoRA adapters.")

    def __post_init__(self) -> None:
        check_attention(self.attn_implementation, "model.attn_implementation")

    def check_exists(self) -> None:
        check_model_dir(self.path, "model.path", "run `python -m jobs.prepare_model` or point model.path at an "
                                                 "exported model")


class ModelDirError(ConfigError):
    """A path that should hold a Hugging Face model does not."""


def check_model_dir(path: str | Path, key: str, hint: str) -> Path:
    """``path`` when it holds a Hugging Face model (a ``config.json``).

    Parameters
    ----------
    path
        The model directory.
    key
        The config key that gave it (``grounded_model``, ``systems[rac].path``), named in the error.
    hint
        What makes the model, or what to set instead (``run `make run` first``).

    Raises
    ------
    ModelDirError
        ``<key> <path> is not a Hugging Face model directory (no config.json); <hint>``.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{key} {path} is not a Hugging Face model directory (no config.json); {hint}")
    return path


def check_device(device: str, num_gpus: float, key: str) -> None:
    """Refuse ``device: cuda`` for an actor that reserves no GPU (``key`` names its ``num_gpus``):
    Ray shows an actor only the GPUs it reserves."""
    if device == "cuda" and num_gpus <= 0:
        raise ConfigError(f"device is 'cuda' but {key} is {num_gpus:g}: a Ray actor sees only the GPUs it reserves; "
                          f"set {key} to 1 (or a fraction of one) on a GPU cluster, or device: auto")


def resolve_device(device: str, num_gpus: float) -> str:
    """The torch device of an actor: ``cuda`` when asked for and visible, ``auto`` as cuda when
    the actor reserves GPUs and one is visible, else ``cpu``.

    Raises :class:`ConfigError` when ``device`` is ``cuda`` and no GPU is visible.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no GPU is visible to this actor; set num_gpus > 0 in the actor "
                          "pool on a GPU node, or device: cpu")
    if device == "auto":
        return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return device


def bf16_native(use_gpu: bool) -> bool:
    """Whether the device computes bfloat16 natively (a GPU with bf16; a CPU with AVX512-BF16 or AMX)."""
    if use_gpu:
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return machine.bf16_supported()


def stored_dtype(path: str | Path) -> str:
    """The dtype a model directory's weights are stored in (its ``config.json``; float32 when unsaid)."""
    import json

    config = json.loads((Path(path) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def resolve_dtype(dtype: str, use_gpu: bool, stored: str | None = None) -> str:
    """``dtype`` with ``auto`` resolved (:data:`DTYPE_RULE`).

    Parameters
    ----------
    dtype
        The configured dtype; anything but ``auto`` is returned as is.
    use_gpu
        Whether the model runs on a GPU.
    stored
        The model's own dtype (:func:`stored_dtype`) for inference; None for training's compute
        precision (bfloat16 where the device has it, else float32).
    """
    if dtype != "auto":
        return dtype
    if stored is None:
        return "bfloat16" if bf16_native(use_gpu) else "float32"
    if stored == "float32":
        return "float32"
    if use_gpu:
        return "bfloat16" if stored == "bfloat16" and bf16_native(True) else "float16"
    return "bfloat16" if stored == "bfloat16" and bf16_native(False) else "float32"


def slow_bf16_reason(dtype: str, use_gpu: bool) -> str | None:
    """Why ``dtype`` would run slowly here, or None: bfloat16 asked for on a CPU without native
    bf16 matmuls. The message gives the measured bf16/fp32 matmul speed ratio (a 0.1-s probe)."""
    if dtype != "bfloat16" or use_gpu or machine.bf16_supported():
        return None
    return (f"bfloat16 on a CPU without native bf16 matmuls ({machine.cpu_model()}: no AVX512-BF16 or AMX): "
            f"a bf16 matmul runs at {machine.bf16_speed_ratio():.3g}x the float32 speed here; "
            f"dtype auto picks float32 on this CPU")


def warn_slow_bf16(dtype: str, use_gpu: bool, key: str = "model.dtype") -> str | None:
    """Preflight: log :func:`slow_bf16_reason` as a warning naming the config ``key``; the run
    still proceeds as asked. Returns the reason (None when there is nothing to warn about)."""
    reason = slow_bf16_reason(dtype, use_gpu)
    if reason:
        logger.warning("%s is %s; the run proceeds as asked", key, reason)
    return reason


def peft_config(cfg: LoraConfig) -> Any:
    """PEFT's LoraConfig for causal LMs from our section."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def load_tokenizer(path: str | Path, padding_side: str = "left", prompt_format: str | None = None) -> Any:
    """The model's tokenizer, with a pad token (the EOS token where none is defined), encoding
    prompts in ``prompt_format`` (None: the format recorded in ``path``, :mod:`rac.models.prompts`)."""
    from transformers import AutoTokenizer

    from rac.models.prompts import read_prompt_format, set_prompt_format

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return set_prompt_format(tok, prompt_format or read_prompt_format(path))


def load_model(path: str | Path, dtype: str, attn_implementation: str = "sdpa", device: str = "cpu") -> Any:
    """The causal LM at ``path`` with its weights in ``dtype`` (a resolved dtype, not ``auto``),
    loaded straight onto ``device``. LoRA adapters are added by the trainer (:func:`peft_config`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, "model.path", "point it at a saved model")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                attn_implementation=attn_implementation,
                                                device_map=None if device == "cpu" else device)


def load_causal_lm(path: str | Path, dtype: str = "auto", device: str = "cpu",
                   attn_implementation: str = "sdpa") -> Any:
    """A causal LM from a local directory for inference: eval mode, on ``device``, in ``dtype``
    (``auto``: :data:`DTYPE_RULE`)."""
    resolved = resolve_dtype(dtype, use_gpu=device.startswith("cuda"), stored=stored_dtype(check_model_dir(
        path, "model.path", "point it at a saved model")))
    return load_model(path, resolved, attn_implementation, device).eval()
