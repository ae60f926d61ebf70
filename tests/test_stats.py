import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ttp.analysis.stats import bootstrap_draws, collapsed, group_means, within_pool_correlation


def test_within_pool_correlation_matches_scipy_per_pool():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 9)), rng.normal(size=(6, 9))
    y[:, :3] += 2 * x[:, :3]
    for method, reference in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        expected = [reference(a, b)[0] for a, b in zip(x, y)]
        np.testing.assert_allclose(within_pool_correlation(x, y, method=method), expected, atol=1e-12)


def test_flat_layout_with_groups_equals_the_matrix_layout_even_for_uneven_pools():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    groups = np.repeat(np.array(list("edcba")), 7)  # group order differs from row order
    by_group = within_pool_correlation(x.ravel(), y.ravel(), groups=groups)
    np.testing.assert_allclose(by_group[::-1], within_pool_correlation(x, y), atol=1e-12)
    uneven = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    a, b = rng.normal(size=8), rng.normal(size=8)
    got = within_pool_correlation(a, b, groups=uneven)
    assert got[0] == pytest.approx(stats.pearsonr(a[:3], b[:3])[0])
    assert got[1] == pytest.approx(stats.pearsonr(a[3:], b[3:])[0])


def test_a_pool_without_spread_in_either_variable_counts_zero():
    x = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    y = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(within_pool_correlation(x, y), [0.0, 0.0, -1.0])


def test_normal_scores_ignore_monotone_transforms_and_unknown_methods_are_refused():
    rng = np.random.default_rng(2)
    x = rng.random((4, 12))
    np.testing.assert_allclose(within_pool_correlation(x, np.exp(5 * x), method="normal_scores"), 1.0)
    with pytest.raises(ValueError, match="correlation must be one of"):
        within_pool_correlation(x, x, method="kendall")


def test_group_means_equal_pandas():
    rng = np.random.default_rng(3)
    values, groups = rng.normal(size=40), rng.choice(["u1", "u2", "u3"], 40)
    ids, means = group_means(values, groups)
    expected = pd.Series(values).groupby(groups).mean()
    assert list(ids) == list(expected.index)
    np.testing.assert_allclose(means, expected.to_numpy())


def test_bootstrap_draws_resample_every_group_count_with_replacement():
    draws = bootstrap_draws(7, 500, seed=4)
    assert draws.shape == (500, 7) and np.all(draws.sum(axis=1) == 7)
    assert 0.9 < draws.mean() < 1.1 and (draws == 0).any()


def test_collapse_is_relative_to_the_median_group():
    mask, threshold = collapsed(np.array([1.0, 0.9, 1.1, 0.05, 0.0]), tau=0.1)
    assert threshold == pytest.approx(0.09)
    assert mask.tolist() == [False, False, False, True, True]
