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
    dtype: Literal["float32", "bfloat16", "float16"] = field_help(
        "float32", help="Weights dtype (float32 on CPU; bfloat16 on recent GPUs).")
    lora: LoraConfig = nested(LoraConfig, "LoRA adapters.")

    def check_exists(self) -> None:
        path = Path(self.path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path {self.path} is not a Hugging Face model directory (no config.json); "
                              f"run `python -m jobs.prepare_model` or point model.path at an exported model")


def load_tokenizer(path: str | Path, padding_side: str = "left") -> Any:
    """The model's tokenizer, with a pad token (the EOS token where none is defined)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(cfg: ModelConfig, path: str | Path | None = None) -> Any:
    """A causal LM from ``path`` (default ``cfg.path``), with LoRA adapters if configured."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path or cfg.path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model in {path} (config.json missing)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, cfg.dtype))
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    return model


def load_causal_lm(path: str | Path, dtype: str, device: str = "cpu") -> Any:
    """A causal LM from a local directory for inference: eval mode, on ``device``."""
    return load_model(ModelConfig(path=str(path), dtype=dtype)).to(device).eval()
