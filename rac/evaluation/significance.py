"""Significance of the difference between two systems on the same rows, and metric validity.

Paired tests (both systems scored on the same test rows, ``d_i = a_i - b_i``):

- paired bootstrap (Koehn, 2004, "Statistical Significance Tests for Machine Translation
  Evaluation"; Efron & Tibshirani, 1993, Sec. 16.4): resample the rows with replacement,
  seeded; the two-sided p-value is the share of resampled mean differences at least as far
  from the observed mean as the observed mean is from 0 (the bootstrap distribution shifted
  to the null), with add-one smoothing; plus the 95% percentile interval of the mean;
- paired t-test (``scipy.stats.ttest_rel``);
- effect size: Cohen's d for paired differences, ``d_z = mean(d) / sd(d)`` (Cohen, 1988;
  Lakens, 2013, Eq. 6).

Seeds pooled. A system trained with several seeds gives a table of scores, seeds x rows, and
``d_si = a_si - b_si`` pairs each seed of ``a`` with the same seed of ``b`` (a system trained
once is the same run for every seed). Seeds and rows are crossed factors, so the bootstrap
draws both (the pigeonhole bootstrap, Owen, 2007, Ann. Appl. Stat. 1(2)): each resample draws
rows with replacement, the same rows for every seed, and seeds with replacement; its statistic
is the mean of ``d`` over the drawn seeds and rows. A gain that one lucky seed carries is then
not significant however many rows agree, as it would be to a test over rows alone. With one
seed this is the paired bootstrap above, draw for draw. The t-test and ``d_z`` are over rows,
of the differences averaged over seeds; the per-seed mean differences come with their 95%
interval over seeds (Student t).

Metric validity on the T2 pairs: how often a faithfulness score ranks C+ above C- (AUC,
ties count one half) and its Spearman correlation with the realised mixing rate of C-.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: None stands for an undefined figure."""
    return float(x) if math.isfinite(x) else None


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Cohen's d_z of paired differences ``a - b``: 0 when they are all 0, None when undefined."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd == 0.0:
        return 0.0 if d.mean() == 0.0 else None  # a constant nonzero shift has no finite effect size
    return float(d.mean() / sd)


def ci95_over_seeds(values: Sequence[float]) -> list[float] | None:
    """Student-t 95% interval of the mean of per-seed values; None with fewer than two seeds."""
    if len(values) < 2:
        return None
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return [float(arr.mean() - half), float(arr.mean() + half)]


def over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """A figure measured once per seed: ``mean``, ``per_seed`` and ``ci95_seeds`` (:func:`ci95_over_seeds`)."""
    return {"mean": float(np.mean(values)), "per_seed": [float(v) for v in values],
            "ci95_seeds": ci95_over_seeds(values)}


def seed_differences(a: Any, b: Any) -> np.ndarray:
    """``a - b`` as a seeds x rows matrix: 1-D scores are one seed; a side with one seed is paired
    with every seed of the other (a system trained once)."""
    a_arr, b_arr = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a_arr.shape[1] != b_arr.shape[1] or (a_arr.shape[0] != b_arr.shape[0] and 1 not in (a_arr.shape[0],
                                                                                           b_arr.shape[0])):
        raise ValueError(f"paired scores need the same rows and the same seeds (or one seed on a side), got "
                         f"{a_arr.shape} and {b_arr.shape} (seeds x rows)")
    return a_arr - b_arr


def paired_bootstrap(a: Any, b: Any, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Two-sided paired bootstrap test of ``mean(a - b) == 0``, over rows, and over seeds when given.

    Parameters
    ----------
    a, b
        Per-row scores of the two systems on the same rows, in the same order: one list, or
        one list per seed (seeds x rows; see the module docstring for how seeds are drawn).
    samples
        Bootstrap resamples.
    seed
        Seed of the resampling (same seed, same p-value).

    Returns
    -------
    dict
        ``p_value``, ``ci95`` (percentile interval of the mean difference), ``samples``,
        ``seed`` and ``a_better_share`` (share of resamples where ``a`` wins, Koehn's figure).
    """
    d = seed_differences(a, b)
    if d.size == 0:
        raise ValueError("paired_bootstrap needs at least one pair of scores")
    n_seeds, n_rows = d.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_rows, size=(samples, n_rows))
    if n_seeds == 1:
        means = d[0][idx].mean(axis=1)
    else:
        per_seed = d[:, idx].mean(axis=2).T  # (samples, seeds): each seed's mean over the drawn rows
        drawn = rng.integers(0, n_seeds, size=(samples, n_seeds))
        means = np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)
    observed = d.mean()
    extreme = np.abs(means - observed) >= abs(observed) - 1e-12  # tolerance: identical systems give p = 1
    return {"p_value": float((extreme.sum() + 1) / (samples + 1)),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "a_better_share": float((means > 0).mean()), "samples": samples, "seed": seed}


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """scipy's paired t-test; identical scores give t = 0, p = 1 (scipy would give NaN)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2:
        return {"t": None, "p_value": None}
    if np.all(d == d[0]):
        # No variance: scipy divides by zero. Equal scores are no evidence of a difference;
        # a constant nonzero shift on every row is as strong as evidence gets.
        return {"t": 0.0, "p_value": 1.0} if d[0] == 0 else {"t": None, "p_value": 0.0}
    result = stats.ttest_rel(a, b)
    return {"t": _finite(result.statistic), "p_value": _finite(result.pvalue)}


def compare_systems(a: Any, b: Any, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All paired figures of system a against system b on the same rows (and seeds, when given:
    seeds x rows, pooled as the module docstring says).

    Returns
    -------
    dict
        ``n`` (rows), ``seeds``, ``mean_a``, ``mean_b``, ``mean_diff``, ``bootstrap``
        (:func:`paired_bootstrap`), ``t_test`` and ``cohens_d`` (over rows, differences
        averaged over seeds), ``per_seed_diff`` (mean difference per seed), ``ci95_seeds``
        (its Student-t interval; None with one seed) and ``seeds_a_better`` (seeds whose mean
        difference is > 0).
    """
    d = seed_differences(a, b)
    a_mean = np.atleast_2d(np.asarray(a, dtype=float)).mean(axis=0)  # per row, averaged over seeds
    b_mean = np.atleast_2d(np.asarray(b, dtype=float)).mean(axis=0)
    per_seed = d.mean(axis=1)
    return {"n": int(a_mean.size), "seeds": int(d.shape[0]), "mean_a": float(a_mean.mean()),
            "mean_b": float(b_mean.mean()), "mean_diff": float(d.mean()),
            "bootstrap": paired_bootstrap(a, b, samples=samples, seed=seed),
            "t_test": paired_t_test(a_mean, b_mean), "cohens_d": cohens_d_paired(a_mean, b_mean),
            "per_seed_diff": [float(x) for x in per_seed], "ci95_seeds": ci95_over_seeds(per_seed),
            "seeds_a_better": int((per_seed > 0).sum())}


# ----------------------------------------------------------------------------- metric validity


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of T2 rows whose C+ scores above its own C- (ties count one half)."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return float(((c > r) + 0.5 * (c == r)).mean())


def ranking_auc(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """AUC: probability that a random C+ scores above a random C- (Mann-Whitney U / n1 n2, ties one half)."""
    from scipy import stats

    u = stats.mannwhitneyu(chosen, rejected, alternative="two-sided").statistic
    return float(u / (len(chosen) * len(rejected)))


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and its p-value; None when either side is constant (rho undefined)."""
    from scipy import stats

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"rho": None, "p_value": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x, y)
    return {"rho": _finite(result.statistic), "p_value": _finite(result.pvalue)}


def metric_validity(chosen: Sequence[float], rejected: Sequence[float],
                    mixing_rate: Sequence[float]) -> dict[str, Any]:
    """How well a faithfulness score separates C+ from C- and tracks the realised mixing rate.

    Parameters
    ----------
    chosen, rejected
        The score of C+ and of C- on each T2 row (same order).
    mixing_rate
        The realised share of ungrounded tokens of each C- (mean of its provenance).

    Returns
    -------
    dict
        ``n``, ``pairwise_accuracy`` (rows with s(C+) > s(C-)), ``auc`` (over all pairs of
        C+ and C-), ``spearman_mixing_rate`` (rho and p of s(C-) against the mixing rate;
        a faithful score falls as the mixing rate rises, so rho < 0).
    """
    if not chosen:
        return {"n": 0, "pairwise_accuracy": None, "auc": None, "spearman_mixing_rate": {"rho": None, "p_value": None}}
    return {"n": len(chosen), "pairwise_accuracy": pairwise_accuracy(chosen, rejected),
            "auc": ranking_auc(chosen, rejected), "spearman_mixing_rate": spearman(list(rejected), list(mixing_rate))}
