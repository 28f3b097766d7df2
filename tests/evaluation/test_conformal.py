"""Conformal prediction sets (pipeline.evaluation.conformal): coverage on a synthetic problem whose noise is known."""
import numpy as np
import pytest

from pipeline.evaluation.conformal import UNCERTAIN, calibrate, coverage_metrics, nominal_interval, predict_sets, set_label


def _problem(n_per_class, rng, sharpen=1.0, weights=(0.5, 0.3, 0.2)):
    """Three Gaussian classes on a line, known noise sd 1: true posteriors, optionally over-confident (sharpen > 1)."""
    means = np.array([0.0, 1.5, 3.0])
    y = rng.choice(3, size=n_per_class, p=weights)
    x = means[y] + rng.normal(0, 1.0, len(y))
    logit = -0.5 * (x[:, None] - means[None, :]) ** 2 + np.log(weights)
    logit *= sharpen
    p = np.exp(logit - logit.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), y


def test_coverage_lands_in_the_binomial_interval_overall_and_per_class():
    """Ten independent calibrate/test replicates of an over-confident model: the coverage pooled over them lies in the
    binomial 95% interval of 90% for that many rows, overall and in every class, and each replicate's mostly does."""
    hits, sizes, outside = {k: [] for k in ("", "_a", "_b", "_c")}, [], 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        p_cal, y_cal = _problem(20000, rng, sharpen=4.0)
        p_te, y_te = _problem(2000, rng, sharpen=4.0)
        assert (p_te.argmax(axis=1) == y_te).mean() < 0.80  # the top label alone covers far less than 90%
        sets = predict_sets(calibrate(p_cal, y_cal, 0.90), p_te)
        m = coverage_metrics(y_te, sets, ["a", "b", "c"], 0.90)
        for key in hits:
            hits[key].append((m[f"conformal_coverage{key}"] * m[f"conformal_n{key}"], m[f"conformal_n{key}"]))
            outside += not (m[f"conformal_coverage{key}_nominal_low"] <= m[f"conformal_coverage{key}"]
                            <= m[f"conformal_coverage{key}_nominal_high"])
        sizes.append(m["conformal_mean_set_size"])
    for key, rows in hits.items():
        covered, n = (sum(v) for v in zip(*rows))
        lo, hi = nominal_interval(int(n), 0.90)
        assert lo <= covered / n <= hi, (key, covered / n, lo, hi)
    assert outside <= 6  # of 40 checks at 95%: about 2 expected by chance
    assert 1.0 < np.mean(sizes) < 3.0  # informative sets: neither all singletons nor every label


def test_marginal_sets_hold_overall_but_not_in_the_rare_class():
    rng = np.random.default_rng(1)
    p_cal, y_cal = _problem(30000, rng, 4.0, weights=(0.8, 0.15, 0.05))
    p_te, y_te = _problem(20000, rng, 4.0, weights=(0.8, 0.15, 0.05))
    marginal = coverage_metrics(y_te, predict_sets(calibrate(p_cal, y_cal, 0.9, class_conditional=False), p_te),
                                "abc", 0.9)
    mondrian = coverage_metrics(y_te, predict_sets(calibrate(p_cal, y_cal, 0.9), p_te), "abc", 0.9)
    assert marginal["conformal_coverage_c"] < marginal["conformal_coverage_c_nominal_low"]
    assert mondrian["conformal_coverage_c_nominal_low"] <= mondrian["conformal_coverage_c"]


def test_a_class_too_rare_to_exclude_is_always_in_the_set():
    rng = np.random.default_rng(2)
    p, y = _problem(300, rng)
    keep = (y != 2) | (np.cumsum(y == 2) <= 5)  # five rows of class 2: p-value >= 1/6 > 0.10
    sets = predict_sets(calibrate(p[keep], y[keep], 0.90), p)
    assert sets[:, 2].all()
    assert not sets[:, 0].all()


def test_set_words_and_nominal_interval():
    assert set_label(["A", "B", "C", "D"], [False, True, True, False]) == "B or C"
    assert set_label(["benign", "malignant"], [False, True], several_is_uncertain=True) == "malignant"
    assert set_label(["benign", "malignant"], [True, True], several_is_uncertain=True) == UNCERTAIN
    lo, hi = nominal_interval(119, 0.90)
    assert 0.84 < lo < 0.86 and 0.94 < hi < 0.96  # about +-5 points on 119 lesions, as the issue says


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="coverage"):
        calibrate(np.full((4, 2), 0.5), [0, 1, 0, 1], 1.5)
    state = calibrate(np.full((4, 2), 0.5), [0, 1, 0, 1], 0.9)
    with pytest.raises(ValueError, match="2 columns"):
        predict_sets(state, np.full((1, 3), 1 / 3))
