"""Model factory: any Hugging Face causal LM from a local directory, optional LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rac import machine
from rac.config import ConfigError, field_help, nested

logger = logging.getLogger(__name__)


#: The dtypes a model's weights may be loaded in.
Dtype = Literal["float32", "bfloat16", "float16"]
#: The torch devices an actor may run a model on (``auto``: see :func:`resolve_device`).
Device = Literal["auto", "cpu", "cuda"]


def dtype_field() -> Any:
    """The config field of a model's weights dtype (:data:`Dtype`)."""
    return field_help("float32", help="Weights dtype (float32 on CPU; bfloat16 on recent GPUs).")


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

    path: str = field_help("outputs/models/smollm2-135m-instruct", storage="path",
                           help="Local Hugging Face model directory (python -m jobs.prepare_model writes one).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field_help(
        "auto", help="Compute precision: auto picks bfloat16 where the device supports it (CPUs with AVX512-BF16 "
                     "or AMX, recent GPUs), else float32. Training keeps float32 weights and runs bf16/fp16 as "
                     "mixed precision.")
    lora: LoraConfig = nested(LoraConfig, "LoRA adapters.")

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


def resolve_dtype(dtype: str, use_gpu: bool) -> str:
    """``dtype`` with ``auto`` resolved for the device: bfloat16 where it is supported, else float32."""
    if dtype != "auto":
        return dtype
    import torch

    if use_gpu:
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if machine.bf16_supported() else "float32"


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


def load_tokenizer(path: str | Path, padding_side: str = "left") -> Any:
    """The model's tokenizer, with a pad token (the EOS token where none is defined)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(cfg: ModelConfig, path: str | Path | None = None) -> Any:
    """The causal LM at ``path`` (default ``cfg.path``) in ``cfg.dtype``; LoRA adapters are
    added by the trainer (:func:`peft_config`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path or cfg.path, "model.path", "point it at a saved model")
    dtype = resolve_dtype(cfg.dtype, use_gpu=torch.cuda.is_available())
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))


def load_causal_lm(path: str | Path, dtype: str, device: str = "cpu") -> Any:
    """A causal LM from a local directory for inference: eval mode, on ``device``."""
    return load_model(ModelConfig(path=str(path), dtype=dtype)).to(device).eval()
