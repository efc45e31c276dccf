"""Model factory: any Hugging Face causal LM from a local directory, optional LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rac.config import ConfigError, field_help, nested

logger = logging.getLogger(__name__)


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

    path: str = field_help("outputs/models/smollm2-135m-instruct",
                           help="Local Hugging Face model directory (python -m jobs.prepare_model writes one).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field_help(
        "auto", help="Compute precision: auto picks bfloat16 where the device supports it (CPUs with AVX512-BF16 "
                     "or AMX, recent GPUs), else float32. Training keeps float32 weights and runs bf16/fp16 as "
                     "mixed precision.")
    lora: LoraConfig = nested(LoraConfig, "LoRA adapters.")

    def check_exists(self) -> None:
        path = Path(self.path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path {self.path} is not a Hugging Face model directory (no config.json); "
                              f"run `python -m jobs.prepare_model` or point model.path at an exported model")


def resolve_dtype(dtype: str, use_gpu: bool) -> str:
    """``dtype`` with ``auto`` resolved for the device: bfloat16 where it is supported, else float32."""
    if dtype != "auto":
        return dtype
    import torch

    if use_gpu:
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


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

    path = Path(path or cfg.path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model in {path} (config.json missing)")
    dtype = resolve_dtype(cfg.dtype, use_gpu=torch.cuda.is_available())
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))


def load_causal_lm(path: str | Path, dtype: str, device: str = "cpu") -> Any:
    """A causal LM from a local directory for inference: eval mode, on ``device``."""
    return load_model(ModelConfig(path=str(path), dtype=dtype)).to(device).eval()
