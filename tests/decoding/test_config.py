"""NegativesConfig: defaults, the checked-in YAML, and impossible values."""

from __future__ import annotations

from pathlib import Path

import pytest

from rac.config import ConfigError, parse_config
from rac.decoding import NegativesConfig

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_config_parses_with_overrides():
    cfg = parse_config(NegativesConfig, ["--config", str(REPO / "configs" / "negatives.yaml"),
                                         "--sampling.alpha", "0.25", "--pool.batch_size", "4"])
    assert cfg.sampling.alpha == 0.25 and cfg.pool.batch_size == 4 and cfg.splits == ["t2"]
    params = cfg.sampling
    assert (params.temperature, params.top_k, params.max_new_tokens, params.stop_at_question) == (0.7, 50, 32, True)


@pytest.mark.parametrize(("override", "message"), [
    (["--sampling.alpha", "1.5"], r"alpha must be in \[0, 1\], got 1.5"),
    (["--sampling.temperature", "0"], "temperature must be > 0, got 0.0; for argmax decoding set do_sample: false"),
    (["--sampling.top_p", "0"], r"top_p must be in \(0, 1\]"),
    (["--sampling.top_k", "-1"], "top_k must be >= 0"),
    (["--sampling.max_new_tokens", "0"], "max_new_tokens must be at least 1"),
    (["--splits", "[t3]"], r"unknown split\(s\) \['t3'\]"),
    (["--device", "tpu"], "device must be one of"),
    (["--sampling.alpah", "0.5"], "Did you mean 'sampling.alpha'"),
    (["--pool.max_size", "0"], "max_size"),
])
def test_impossible_values_say_what_to_change(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(NegativesConfig, override)
