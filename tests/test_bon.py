import itertools

import numpy as np
import pytest

from ttp.analysis.bon import bon_curves, oracle_curves, rank_weights, user_bootstrap


def brute_force(scores, utilities, n):
    """Mean over every N-subset of the utility picked by max score, ties split evenly."""
    values = []
    for subset in itertools.combinations(range(len(scores)), n):
        s = scores[list(subset)]
        winners = [i for i in subset if scores[i] == s.max()]
        values.append(np.mean(utilities[winners]))
    return np.mean(values)


@pytest.mark.parametrize("seed", range(6))
def test_exact_estimator_equals_enumeration_with_ties(seed):
    rng = np.random.default_rng(seed)
    m = 7
    scores = rng.integers(0, 4, size=(3, m)).astype(float)  # few levels: many ties
    utilities = rng.random((3, m))
    curves = bon_curves(scores, utilities)
    for q in range(3):
        for n in range(1, m + 1):
            assert curves[q, n - 1] == pytest.approx(brute_force(scores[q], utilities[q], n), abs=1e-12)


def test_all_tied_pool_gives_the_random_curve():
    utilities = np.array([[0.1, 0.5, 0.0, 0.9, 0.3]])
    constant = bon_curves(np.full_like(utilities, 2.0), utilities)
    np.testing.assert_allclose(constant[0], utilities.mean(), atol=1e-12)


def test_oracle_rises_to_the_pool_maximum():
    rng = np.random.default_rng(1)
    utilities = rng.random((20, 16))
    oracle = oracle_curves(utilities)
    assert np.all(np.diff(oracle, axis=1) >= -1e-12)
    np.testing.assert_allclose(oracle[:, 0], utilities.mean(axis=1))
    np.testing.assert_allclose(oracle[:, -1], utilities.max(axis=1))


def test_rank_weights_are_distributions_for_large_pools():
    w = rank_weights(512)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert np.isfinite(w).all()


def test_shape_and_nan_errors_are_clear():
    with pytest.raises(ValueError, match="same shape|one shape"):
        bon_curves(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        bon_curves(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]))


def test_user_bootstrap_band_brackets_the_mean_and_widens_with_fewer_users():
    rng = np.random.default_rng(0)

    def with_user_effects(n_users):
        users = np.arange(200) % n_users
        return rng.normal(size=n_users)[users][:, None] + rng.normal(size=(200, 4)), users

    many = user_bootstrap(*with_user_effects(50))
    few = user_bootstrap(*with_user_effects(5))
    assert np.all(many.low <= many.mean) and np.all(many.mean <= many.high)
    assert np.all((few.high - few.low) > (many.high - many.low))
