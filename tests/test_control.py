import numpy as np
import pytest

from ttp.analysis.control import calibration, evaluate_policy
from ttp.analysis.simulate import SimulationConfig, simulate


def _population(**overrides):
    base = dict(n_users=80, queries_per_user=8, pool_size=32)
    validation = simulate(SimulationConfig(**{**base, **overrides, "seed": 100}))
    test = simulate(SimulationConfig(**{**base, **overrides, "seed": 101}))
    kappa = calibration(validation.scores, validation.utilities)
    return test, kappa


def _compare(test, kappa, budget, policy, repeats=10):
    uniform = evaluate_policy("uniform", test.scores, test.utilities, test.users, budget, kappa, repeats=repeats)
    other = evaluate_policy(policy, test.scores, test.utilities, test.users, budget, kappa, repeats=repeats)
    diff = other["per_query"] - uniform["per_query"]
    return uniform, other, diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))


def test_greedy_beats_uniform_with_collapsed_users_and_hacked_queries():
    test, kappa = _population(collapsed_user_share=0.3, hacked_query_share=0.1)
    uniform, greedy, gain, se = _compare(test, kappa, 4, "greedy")
    print(f"uniform {uniform['mean']:.4f}, greedy {greedy['mean']:.4f}, gain {gain:.4f} +- {se:.4f}")
    assert greedy["samples_per_query"] == pytest.approx(4, abs=0.01)
    assert gain > 3 * se and gain > 0.002


def test_skip_collapsed_and_early_stop_spend_the_budget_and_help():
    test, kappa = _population(collapsed_user_share=0.3)
    for policy in ("skip_collapsed", "early_stop"):
        _, other, gain, se = _compare(test, kappa, 4, policy, repeats=4)
        assert other["samples_per_query"] <= 4.01
        assert gain > 2 * se, policy


def test_greedy_no_worse_than_uniform_on_a_homogeneous_population():
    test, kappa = _population(rho_sd=0.0)
    _, _, gain, se = _compare(test, kappa, 4, "greedy")
    assert gain > -3 * se


def test_budget_outside_the_pool_is_refused():
    test, kappa = _population()
    with pytest.raises(ValueError, match="must lie in"):
        evaluate_policy("uniform", test.scores, test.utilities, test.users, 64, kappa)


def test_greedy_falls_back_to_uniform_when_the_law_predicts_no_gain():
    test, _ = _population()
    for kappa in (0.0, -0.5):
        uniform = evaluate_policy("uniform", test.scores, test.utilities, test.users, 4, kappa, repeats=3)
        greedy = evaluate_policy("greedy", test.scores, test.utilities, test.users, 4, kappa, repeats=3)
        assert greedy["mean"] == pytest.approx(uniform["mean"], abs=0.002)


def test_collapse_tau_decides_which_users_get_no_more_samples():
    from ttp.analysis.control import ControllerConfig, GainPredictor

    test, kappa = _population(collapsed_user_share=0.3)
    pilot = [row[:4] for row in test.scores]
    for tau, expected in ((0.1, set(test.collapsed_users.tolist())), (1e-6, set())):
        spreads = GainPredictor(test.users, ControllerConfig(collapse_tau=tau), kappa).spreads(pilot)
        assert set(test.users[spreads == 0].tolist()) == expected
