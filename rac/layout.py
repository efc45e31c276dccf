"""The one place a stage's config is wired to a run's layout: the folders it reads and writes,
the models it starts from, its run name.

The pipeline (:mod:`rac.pipeline`) and the study runner (:mod:`rac.experiment.runner`) lay
out their folders differently, and both build each stage's config here, from the stage's
section of their own config. The keys set here are the keys a user may not set in those
sections (:data:`WIRED_KEYS`, refused by :func:`rac.config.refuse_wired_keys`): a value given
there would be lost.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rac.decoding.config import NegativesConfig
from rac.evaluation.config import EvaluateConfig, SystemConfig
from rac.training.config import EXPORT_DIR, RACConfig, SFTConfig

#: Keys of the stage sections that :func:`sft`, :func:`negatives`, :func:`rac` and
#: :func:`evaluate` set from the layout.
WIRED_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("input_dir", "output_dir", "run_name", "model.path", "grounded"),
    "negatives": ("input_dir", "output_dir", "grounded_model", "ungrounded_model"),
    "rac": ("input_dir", "output_dir", "run_name", "model.path"),
    "evaluate": ("input_dir", "output_dir", "systems", "negatives_dirs"),
}


def wired_keys(**more: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """:data:`WIRED_KEYS` plus the keys a runner sets itself, by section."""
    sections = dict.fromkeys([*WIRED_KEYS, *more])  # in a fixed order: the first refused key is always the same
    return {s: tuple(dict.fromkeys(WIRED_KEYS.get(s, ()) + more.get(s, ()))) for s in sections}


def model_dir(stage_dir: str | Path) -> str:
    """The model a training stage writing into ``stage_dir`` exports."""
    return str(Path(stage_dir) / EXPORT_DIR)


def sft(section: SFTConfig, grounded: bool, input_dir: str | Path, output_dir: str | Path, base_model: str,
        **settings: Any) -> SFTConfig:
    """Step 1 (``grounded``, p_theta0) or step 2 (p_uncond) from ``base_model``, run name the folder's."""
    return dataclasses.replace(section, grounded=grounded, input_dir=str(input_dir), output_dir=str(output_dir),
                               run_name=Path(output_dir).name,
                               model=dataclasses.replace(section.model, path=str(base_model)), **settings)


def negatives(section: NegativesConfig, input_dir: str | Path, output_dir: str | Path, grounded_stage: str | Path,
              ungrounded_stage: str | Path, **settings: Any) -> NegativesConfig:
    """Step 3: mixture decoding with the models the two SFT stages exported."""
    return dataclasses.replace(section, input_dir=str(input_dir), output_dir=str(output_dir),
                               grounded_model=model_dir(grounded_stage), ungrounded_model=model_dir(ungrounded_stage),
                               **settings)


def rac(section: RACConfig, input_dir: str | Path, output_dir: str | Path, grounded_stage: str | Path,
        **settings: Any) -> RACConfig:
    """Step 4: the joint objective on the pairs in ``input_dir``, from the grounded model."""
    return dataclasses.replace(section, input_dir=str(input_dir), output_dir=str(output_dir),
                               run_name=Path(output_dir).name,
                               model=dataclasses.replace(section.model, path=model_dir(grounded_stage)), **settings)


def evaluate(section: EvaluateConfig, input_dir: str | Path, output_dir: str | Path, systems: list[SystemConfig],
             negatives_dirs: dict[str, str], **settings: Any) -> EvaluateConfig:
    """Step 5: ``systems`` on the rows of ``input_dir``, the mixture rows of ``negatives_dirs`` by alpha."""
    return dataclasses.replace(section, input_dir=str(input_dir), output_dir=str(output_dir), systems=systems,
                               negatives_dirs=negatives_dirs, **settings)
