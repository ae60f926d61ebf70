"""The Gaussian-copula law on simulated pools where the truth is known."""
import numpy as np
import pytest

from ttp.analysis.bon import bon_curves, oracle_curves, random_curves
from ttp.analysis.copula import copula_correlation, copula_curves
from ttp.analysis.scaling import diagnose
from ttp.analysis.simulate import SimulationConfig, simulate
from ttp.analysis.stats import within_pool_correlation


def test_the_law_is_exact_at_both_ends_whatever_the_utilities():
    rng = np.random.default_rng(0)
    u = np.where(rng.random((20, 9)) < 0.4, 0.0, rng.exponential(0.2, (20, 9)))   # ties at zero
    np.testing.assert_allclose(copula_curves(u, 1.0), oracle_curves(u), atol=1e-12)
    np.testing.assert_allclose(copula_curves(u, 0.0), random_curves(u), atol=1e-12)
    np.testing.assert_allclose(copula_curves(u, -1.0), bon_curves(-u, u), atol=1e-12)


def test_copula_correlation_recovers_the_planted_one_through_ties():
    sim = simulate(SimulationConfig(n_users=50, queries_per_user=20, pool_size=16, utility="zero_inflated",
                                    rho_sd=0.0, seed=7))
    assert (sim.utilities == 0).mean() > 0.45
    assert copula_correlation(sim.scores, sim.utilities).mean() == pytest.approx(0.5, abs=0.02)
    # a plain rank correlation is pulled toward zero by the tied zeros
    assert within_pool_correlation(sim.scores, sim.utilities, method="normal_scores").mean() < 0.45


@pytest.mark.parametrize("utility", ["gaussian", "skewed", "zero_inflated"])
def test_copula_law_matches_simulated_curves_within_monte_carlo_error_up_to_64(utility):
    sim = simulate(SimulationConfig(n_users=60, queries_per_user=20, pool_size=64, utility=utility, seed=3))
    per_query = bon_curves(sim.scores, sim.utilities)
    standard_error = per_query.std(axis=0) / np.sqrt(len(per_query))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    gap = np.abs(d.laws["copula_per_query"] - d.observed) / standard_error
    print(f"{utility}: copula law {gap.max():.2f} SE, Gaussian law "
          f"{(np.abs(d.laws['per_query'] - d.observed) / standard_error).max():.2f} SE")
    assert gap.max() <= 3


def test_the_gaussian_law_misses_zero_inflated_pools_where_the_copula_law_does_not():
    sim = simulate(SimulationConfig(n_users=60, queries_per_user=20, pool_size=64, utility="zero_inflated", seed=3))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    gaussian = d.law_errors["per_query"]["max_share_of_oracle_gain"]
    copula = d.law_errors["copula_per_query"]["max_share_of_oracle_gain"]
    print(f"zero-inflated pools: Gaussian law {gaussian:.1%}, copula law {copula:.1%} of the oracle gain")
    assert copula < 0.05 and gaussian > 3 * copula
    assert d.law_gaps["non_gaussian_utilities"] > 0.1
