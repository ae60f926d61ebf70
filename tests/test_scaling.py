import numpy as np
import pytest

from ttp.analysis.bon import bon_curves
from ttp.analysis.scaling import diagnose, expected_max_normal, fit_ceiling
from ttp.analysis.simulate import SimulationConfig, simulate
from ttp.analysis.stats import within_pool_correlation


def test_expected_max_of_normals_matches_known_values_and_simulation():
    e = expected_max_normal(64)
    assert e[0] == 0.0
    assert e[1] == pytest.approx(1 / np.sqrt(np.pi), abs=1e-9)
    assert e[2] == pytest.approx(3 / (2 * np.sqrt(np.pi)), abs=1e-9)
    draws = np.random.default_rng(0).standard_normal((200_000, 64)).max(axis=1)
    assert e[63] == pytest.approx(draws.mean(), abs=4 * draws.std() / np.sqrt(len(draws)))


@pytest.mark.slow
def test_per_query_law_matches_gaussian_pools_within_monte_carlo_error():
    sim = simulate(SimulationConfig(n_users=100, queries_per_user=20, pool_size=64, seed=3))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    per_query = bon_curves(sim.scores, sim.utilities)
    standard_error = per_query.std(axis=0) / np.sqrt(len(per_query))
    gap = np.abs(d.laws["per_query"] - d.observed)
    assert np.all(gap <= 3 * standard_error), (gap / standard_error).max()


@pytest.mark.slow
def test_planted_collapse_and_hacking_are_found():
    sim = simulate(SimulationConfig(collapsed_user_share=0.2, hacked_query_share=0.15,
                                    pool_size=64, seed=5))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    found_users = {c["user"] for c in d.collapsed_users}
    planted_users = set(sim.collapsed_users.tolist())
    assert found_users == planted_users
    found = {h["query"] for h in d.hacked_queries}
    planted = set(sim.hacked_queries.tolist())
    recall = len(found & planted) / len(planted)
    precision = len(found & planted) / len(found)
    print(f"hacking recall {recall:.2f} precision {precision:.2f}")
    assert recall >= 0.9 and precision >= 0.9
    assert d.collapse_rate == pytest.approx(np.isin(sim.users, sim.collapsed_users).mean())
    assert d.hacked_share > 5 * d.hacked_share_expected_by_chance


@pytest.mark.slow
def test_rho_bar_decomposes_into_positive_and_negative_parts():
    sim = simulate(SimulationConfig(hacked_query_share=0.3, seed=2))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    # each pool's Pearson correlation by brute force (no user is collapsed in this simulation)
    assert d.collapse_rate == 0
    rho = np.array([np.corrcoef(s, u)[0, 1] if u.std() > 0 and s.std() > 0 else 0.0
                    for s, u in zip(sim.scores, sim.utilities)])
    assert d.rho_bar == pytest.approx(rho.mean())
    assert d.hacked_share == pytest.approx((rho < 0).mean()) and 0.2 < d.hacked_share < 0.4
    assert (d.rho_bar_pos, d.rho_bar_neg) == pytest.approx((rho[rho >= 0].mean(), rho[rho < 0].mean()))
    h = d.hacked_share
    assert d.rho_bar == pytest.approx((1 - h) * d.rho_bar_pos - h * abs(d.rho_bar_neg))


@pytest.mark.slow
def test_no_hacking_means_few_flags():
    sim = simulate(SimulationConfig(rho_mean=0.5, rho_sd=0.05, seed=4))
    d = diagnose(sim.scores, sim.utilities, sim.users)
    assert len(d.hacked_queries) <= 0.02 * len(sim.users)


def _pools(config):
    sim = simulate(config)
    return sim.scores, sim.utilities, sim.users


@pytest.mark.slow
def test_skewed_utilities_law_error_is_measured():
    scores, utilities, users = _pools(SimulationConfig(utility="skewed", seed=1))
    d = diagnose(scores, utilities, users)
    gaussian = diagnose(*_pools(SimulationConfig(seed=1)))
    # the Gaussian per-query law by hand: mu_q + e_N rho_q sigma_q, averaged over queries
    rho = np.array([np.corrcoef(s, u)[0, 1] for s, u in zip(scores, utilities)])
    by_hand = (utilities.mean(1)[:, None] + expected_max_normal(scores.shape[1]) * (rho * utilities.std(1))[:, None])
    np.testing.assert_allclose(d.laws["per_query"], by_hand.mean(0), rtol=1e-6)
    gain = d.oracle[-1] - d.oracle[0]
    for law, errors in d.law_errors.items():
        print(f"skewed pools, {law}: max error {errors['max_share_of_oracle_gain']:.1%} of oracle gain")
        # each law's error is its largest distance from the observed Best-of-N curve
        assert errors["max_abs"] == pytest.approx(np.abs(d.laws[law] - d.observed).max())
        assert errors["max_share_of_oracle_gain"] == pytest.approx(errors["max_abs"] / gain)
    # non-Gaussian utilities break the Gaussian law's assumption: its error must show it
    assert d.law_errors["per_query"]["max_abs"] > gaussian.law_errors["per_query"]["max_abs"]


def test_a_user_with_constant_scores_is_the_one_collapsed():
    rng = np.random.default_rng(0)
    u = rng.random((30, 8))
    users = np.arange(30) % 3
    scores = u + rng.normal(0, 0.1, u.shape)
    scores[users == 1] = 0.5
    d = diagnose(scores, u, users)
    assert [c["user"] for c in d.collapsed_users] == [1]
    assert d.collapse_rate == pytest.approx(1 / 3)
    assert d.rho_bar > 0.8          # the collapsed user's zeros do not drag the others' correlation
    assert np.all(d.per_query["collapsed"] == (users == 1))


def test_correlation_options_agree_on_monotone_relation():
    x = np.random.default_rng(0).random((5, 20))
    for method in ("pearson", "spearman", "normal_scores"):
        assert np.all(within_pool_correlation(x, x**3, method=method) > 0.8)
    with pytest.raises(ValueError, match="correlation must be one of"):
        within_pool_correlation(x, x, method="kendall")


def test_ceiling_fit_recovers_the_generating_form():
    n = np.arange(1, 33)
    fits = fit_ceiling(0.2 + 0.05 * np.log(n))
    assert fits[0].form == "a + b ln N"
    assert fits[0].b == pytest.approx(0.05) and fits[0].rmse < 1e-9
