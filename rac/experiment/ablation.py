"""The chosen-SFT ablation of a finished study: is the selected setting's gain the preference term's?

RAC's SFT term trains on C+. With ``pairs.chosen: best_of_n``, C+ is the grounded model's most
grounded sample, not the gold question that the gamma = 0 baseline trains on. So RAC against
gamma = 0 differs in two things: the preference term, and the SFT target. This trains the
selected setting once more per seed with gamma = 0 on the *same pairs* (SFT on C+ alone, the
rejection-sampling baseline), evaluates it on validation and on test, and tests it paired, seeds
pooled, against the study's selected RAC setting and its baselines. It runs after the study, on
its stages (it reads its pairs, grounded models and test predictions, and selects nothing)::

    python -m jobs.ablation --config configs/experiments/qulac-pairs.yaml

Outputs (resumable stages, as the study's): ``<study_dir>/ablation/train/chosen-sft-s<seed>/``,
``ablation/val/``, ``ablation/test/``, and ``ablation/results.json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from rac import layout
from rac.config import ConfigError
from rac.data.schema import VALIDATION_SPLIT
from rac.evaluation import run_evaluate
from rac.evaluation.catalogue import ROW_METRICS
from rac.evaluation.config import CONTINUED_SFT, GROUNDED_SFT, RAC_SYSTEM, SystemConfig
from rac.experiment.config import ExperimentConfig
from rac.experiment.results import paired, prediction_rows, system_entry, system_families
from rac.experiment.runner import Study
from rac.experiment.study import seed_name
from rac.pipeline import read_manifest
from rac.training import run_rac

logger = logging.getLogger(__name__)

CHOSEN_SFT = "chosen-sft"


def run_chosen_sft_ablation(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train, evaluate and test the chosen-SFT ablation of the finished study ``cfg``; returns what
    ``ablation/results.json`` holds. Ray must be initialised by the caller."""
    study = Study(cfg)

    def known(stage: str) -> None:
        manifest = read_manifest(study.path(*stage.split("/")))
        if not manifest:
            raise FileNotFoundError(f"{study.path(stage)} has no manifest: finish the study first, with "
                                    f"python -m jobs.experiment and the same config")
        study.manifests[stage] = manifest

    known("selection")
    selected_name = json.loads(study.path("selection", "selection.json").read_text())["selected"]
    selected = next((v for v in study.variants if v.name == selected_name), None)
    if selected is None:
        raise ConfigError(f"the study selected {selected_name}, which is not in this config's grid: give the "
                          f"config the study ran with")

    systems, stages = [], []
    for seed in cfg.seeds:
        pairs, grounded = study.pairs_stage(selected, seed), study.sft_stage("grounded", seed)
        known(pairs)
        known(grounded)
        name = f"ablation/train/{seed_name(CHOSEN_SFT, seed)}"
        rac = layout.rac(cfg.rac, study.path(pairs), study.path(name), study.path(grounded), gamma=0.0,
                         beta=selected.beta, loss_type=selected.loss_type, seed=seed)
        study.stage(name, rac, run_rac, [pairs, grounded])
        systems.append(SystemConfig(seed_name(CHOSEN_SFT, seed), study.model(name), "grounded"))
        stages.append(name)
    known("splits")
    for split, input_dir in ((VALIDATION_SPLIT, study.select_dir), ("test", str(study.path("splits", "test")))):
        ev = layout.evaluate(cfg.evaluate, input_dir, study.path("ablation", split), systems, {}, splits=[split])
        study.stage(f"ablation/{split}", ev, run_evaluate, ["splits", *stages])

    samples, boot_seed = cfg.evaluate.bootstrap_samples, cfg.evaluate.seed
    names = {CHOSEN_SFT: [s.name for s in systems], **system_families(cfg, selected.name)}
    out = {"selected": selected.name, "pairs": study.pairs_stage(selected, cfg.seeds[0]), "splits": {}}
    for split, baseline_dir in ((VALIDATION_SPLIT, "validation"), ("test", "test")):
        runs = {f: [prediction_rows(study.path("ablation"), split, n) if f == CHOSEN_SFT else
                    prediction_rows(study.dir, baseline_dir, n) for n in ns] for f, ns in names.items()}
        report = json.loads(study.path("ablation", split, "report.json").read_text())
        metrics = [m for m in ROW_METRICS if m in next(iter(runs[CHOSEN_SFT][0].values()))]
        out["splits"][split] = {
            CHOSEN_SFT: system_entry(report, names[CHOSEN_SFT], runs[CHOSEN_SFT], samples, boot_seed),
            "significance": {f"{a} vs {b}": paired(runs[a], runs[b], metrics, samples, boot_seed)
                             for a, b in ((RAC_SYSTEM, CHOSEN_SFT), (CHOSEN_SFT, GROUNDED_SFT),
                                          (CHOSEN_SFT, CONTINUED_SFT))}}
    path = study.path("ablation", "results.json")
    path.write_text(json.dumps(out, indent=2, default=str))
    logger.info("chosen-SFT ablation: %s", path)
    return out
