"""Paired significance tests, effect size and metric validity on constructed examples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rac.evaluation.significance import (
    cohens_d_paired,
    compare_systems,
    metric_validity,
    paired_bootstrap,
    paired_t_test,
    ranking_auc,
)


def test_identical_systems_are_not_different():
    a = np.random.default_rng(1).uniform(size=50)
    result = compare_systems(a, a.copy(), samples=500, seed=0)
    assert result["bootstrap"]["p_value"] == pytest.approx(1.0)
    assert result["t_test"] == {"t": 0.0, "p_value": 1.0}
    assert result["cohens_d"] == 0.0 and result["mean_diff"] == 0.0


def test_clearly_different_systems_are_significant():
    rng = np.random.default_rng(2)
    b = rng.uniform(0.2, 0.4, size=40)
    a = b + 0.2 + rng.normal(0, 0.05, size=40)
    result = compare_systems(a, b, samples=1000, seed=0)
    assert result["bootstrap"]["p_value"] < 0.05
    assert result["t_test"]["p_value"] < 0.05
    assert result["t_test"]["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    low, high = result["bootstrap"]["ci95"]
    assert low < result["mean_diff"] < high and low > 0
    d = a - b
    assert result["cohens_d"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert result["bootstrap"]["a_better_share"] == 1.0


def test_noise_is_not_significant_and_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=30), rng.normal(size=30)
    first = paired_bootstrap(a, b, samples=800, seed=7)
    assert first == paired_bootstrap(a, b, samples=800, seed=7)
    assert first != paired_bootstrap(a, b, samples=800, seed=8)
    assert first["p_value"] > 0.05 and paired_t_test(a, b)["p_value"] > 0.05


def test_cohens_d_by_hand():
    # differences 1, 2, 3: mean 2, sd 1 -> d_z = 2
    assert cohens_d_paired([2, 4, 6], [1, 2, 3]) == pytest.approx(2.0)
    assert cohens_d_paired([1, 1], [0, 0]) is None  # constant nonzero shift: no finite d


def test_metric_validity_on_constructed_pairs():
    chosen = [0.9, 0.8, 0.7, 0.6]
    rejected = [0.1, 0.8, 0.2, 0.65]  # row 2 ties (counts 1/2), row 4 is ranked wrongly
    mixing_rate = [1.0, 0.0, 0.75, 0.25]
    result = metric_validity(chosen, rejected, mixing_rate)
    assert result["n"] == 4
    assert result["pairwise_accuracy"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    # all 16 (C+, C-) pairs: C+ above in 0.9:4, 0.8:3+tie, 0.7:3, 0.6:2 -> (12 + 0.5) / 16
    assert result["auc"] == pytest.approx(12.5 / 16)
    assert ranking_auc([1, 1], [0, 0]) == 1.0 and ranking_auc([0, 0], [1, 1]) == 0.0
    # rejected ranks 1,4,2,3 vs mixing-rate ranks 4,1,3,2: perfectly reversed -> rho = -1
    assert result["spearman_mixing_rate"]["rho"] == pytest.approx(-1.0)
    assert metric_validity([0.5] * 3, [0.4] * 3, [0.0] * 3)["spearman_mixing_rate"]["rho"] is None


# ----------------------------------------------------------------------------- seeds pooled


def seed_table(effect_per_seed, rows=200, seed=0, noise=0.1):
    """A synthetic study: per-row difficulty shared by both systems and every seed, each seed of
    system a shifted by its effect, row noise on top. Returns (a, b), seeds x rows."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.2, 0.6, size=rows)
    b = np.stack([difficulty + rng.normal(0, noise, rows) for _ in effect_per_seed])
    a = np.stack([difficulty + e + rng.normal(0, noise, rows) for e in effect_per_seed])
    return a, b


def test_seed_pooled_test_detects_a_known_effect_and_not_a_null():
    a, b = seed_table([0.04, 0.05, 0.03])
    result = compare_systems(a, b, samples=2000, seed=0)
    assert result["seeds"] == 3 and result["n"] == 200
    assert result["mean_diff"] == pytest.approx((a - b).mean())
    assert result["per_seed_diff"] == pytest.approx(list((a - b).mean(axis=1)))
    assert result["bootstrap"]["p_value"] < 0.01 and result["t_test"]["p_value"] < 0.01
    assert result["seeds_a_better"] == 3 and result["ci95_seeds"][0] > 0
    assert result["bootstrap"]["ci95"][0] < 0.04 < result["bootstrap"]["ci95"][1]

    null = compare_systems(*seed_table([0.0, 0.0, 0.0], seed=1), samples=2000, seed=0)
    assert null["bootstrap"]["p_value"] > 0.05 and null["t_test"]["p_value"] > 0.05
    assert null["ci95_seeds"][0] < 0 < null["ci95_seeds"][1]


def test_one_lucky_seed_is_not_an_effect():
    # Seed 0 of a is far better on every row, the other two a little worse: averaged over seeds
    # every row favours a, which a test over rows alone calls certain. Drawing seeds too does not.
    a, b = seed_table([0.09, -0.01, -0.02], noise=0.002)
    result = compare_systems(a, b, samples=2000, seed=0)
    assert result["t_test"]["p_value"] < 1e-6
    assert result["bootstrap"]["p_value"] > 0.2 and result["seeds_a_better"] == 1
    assert result["ci95_seeds"][0] < 0 < result["ci95_seeds"][1]


def test_one_seed_is_the_row_bootstrap_and_a_run_trained_once_pairs_with_every_seed():
    a, b = seed_table([0.05])
    assert paired_bootstrap(a, b, samples=300, seed=4) == paired_bootstrap(a[0], b[0], samples=300, seed=4)
    assert compare_systems(a, b)["ci95_seeds"] is None
    a3, _ = seed_table([0.05, 0.05, 0.05])
    once = compare_systems(a3, b[0], samples=300, seed=0)  # b trained once: seed k of a against that one run
    assert once["per_seed_diff"] == pytest.approx(list((a3 - b[0]).mean(axis=1)))
    with pytest.raises(ValueError, match="same seeds"):
        compare_systems(a3, np.vstack([b, b]))
