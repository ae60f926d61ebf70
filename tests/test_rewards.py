import numpy as np
import pytest

from ttp.analysis.bon import bon_curves, random_curves
from ttp.analysis.stats import within_pool_correlation
from ttp.rewards.models import ModelFileError, RewardModel, TrainingDiverged
from ttp.rewards.selection import selection_scores


def planted_pools(n_pools=150, m=16, seed=0, noise_grows=False):
    """Utility = a known function of feature 0 plus noise; feature 1 scales the noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_pools * m, 4)).astype(np.float32)
    noise_scale = 0.05 + (0.5 * (X[:, 1] > 0) if noise_grows else 0.0)
    y = np.tanh(X[:, 0]) + noise_scale * rng.normal(size=len(X))
    groups = np.repeat(np.arange(n_pools), m)
    return X, y.astype(np.float32), groups


@pytest.mark.parametrize("kind", ["pointwise", "bradley_terry", "probabilistic", "ensemble"])
def test_each_reward_model_learns_a_planted_signal(kind):
    X, y, g = planted_pools(seed=1)
    Xv, yv, gv = planted_pools(n_pools=60, seed=2)
    Xt, yt, gt = planted_pools(n_pools=60, seed=3)
    model = RewardModel(kind=kind, max_epochs=150, members=3).fit(X, y, g, Xv, yv, gv)
    scores = model.predict(Xt)
    assert within_pool_correlation(scores, yt, groups=gt).mean() > 0.8
    curve = bon_curves(scores.reshape(60, 16), yt.reshape(60, 16)).mean(axis=0)
    assert curve[15] > curve[0] + 0.3  # selection lifts utility well above the pool mean


def test_probabilistic_sd_grows_where_planted_noise_grows():
    X, y, g = planted_pools(seed=4, noise_grows=True)
    Xv, yv, gv = planted_pools(n_pools=60, seed=5, noise_grows=True)
    model = RewardModel(kind="probabilistic", max_epochs=300, patience=300).fit(X, y, g, Xv, yv, gv)
    _, sd = model.predict(Xv, return_std=True)
    noisy = Xv[:, 1] > 0
    assert sd[noisy].mean() > 2 * sd[~noisy].mean()


def test_constant_reward_model_gives_exactly_the_random_curve():
    X, y, g = planted_pools(n_pools=20, seed=6)
    model = RewardModel(kind="constant").fit(X, y, g)
    scores = model.predict(X).reshape(20, 16)
    np.testing.assert_allclose(bon_curves(scores, y.reshape(20, 16)), random_curves(y.reshape(20, 16)))


@pytest.mark.parametrize("kind", ["bradley_terry", "probabilistic", "ensemble"])
def test_save_and_load_give_identical_predictions(kind, tmp_path):
    X, y, g = planted_pools(n_pools=30, seed=7)
    model = RewardModel(kind=kind, max_epochs=20, members=2).fit(X, y, g)
    model.save(tmp_path / kind)
    loaded = RewardModel.load(tmp_path / kind)
    np.testing.assert_array_equal(model.predict(X), loaded.predict(X))
    if model.is_probabilistic:
        np.testing.assert_array_equal(model.predict(X, return_std=True)[1], loaded.predict(X, return_std=True)[1])


def test_selection_rules():
    X, y, g = planted_pools(n_pools=30, seed=8)
    model = RewardModel(kind="probabilistic", max_epochs=30).fit(X, y, g)
    mean, sd = model.predict(X, return_std=True)
    np.testing.assert_allclose(selection_scores(model, X, g, "lcb", kappa=2.0), mean - 2 * sd, rtol=1e-6)
    p = selection_scores(model, X, g, "p_improve")
    # Φ((mean − b) / sd), b the pool's average predicted mean, pool by pool
    from scipy import stats

    for pool in np.unique(g):
        rows = g == pool
        expected = stats.norm.cdf((mean[rows] - mean[rows].mean()) / sd[rows])
        np.testing.assert_allclose(p[rows], expected, rtol=1e-6, atol=1e-9)
    assert 0 < p.min() < 0.5 < p.max() < 1   # above-average candidates beat the baseline, others do not
    pointwise = RewardModel(kind="pointwise", max_epochs=5).fit(X, y, g)
    with pytest.raises(ValueError, match="needs a probabilistic"):
        selection_scores(pointwise, X, g, "lcb")


def test_bad_inputs_stop_with_clear_messages():
    X, y, g = planted_pools(n_pools=5, seed=9)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        RewardModel(kind="pointwise").fit(X, y, g)
    with pytest.raises(ValueError, match="compute utilities first"):
        RewardModel(kind="pointwise").fit(np.zeros((4, 2)), np.array([0.1, np.nan, 0, 0]), np.zeros(4))
    with pytest.raises(RuntimeError, match="not fitted"):
        RewardModel(kind="pointwise").predict(np.zeros((2, 2)))


def test_diverging_loss_is_reported():
    X, y, g = planted_pools(n_pools=5, seed=10)
    with pytest.raises(TrainingDiverged, match="loss became"):
        RewardModel(kind="pointwise", lr=1e30, max_epochs=50).fit(X * 1e30, y, g)


def test_models_follow_scikit_learn_conventions_and_keep_their_feature_names(tmp_path):
    import pandas as pd

    X, y, g = planted_pools(n_pools=30, seed=11)
    frame = pd.DataFrame(X, columns=["signal", "noise", "a", "b"])
    model = RewardModel(kind="probabilistic", max_epochs=20)
    assert not hasattr(model, "networks_")                 # nothing fitted before fit
    assert model.fit(frame, y, g) is model
    assert model.feature_names_in_ == ["signal", "noise", "a", "b"] and model.n_features_in_ == 4
    model.save(tmp_path)
    loaded = RewardModel.load(tmp_path)
    assert loaded.feature_names_in_ == model.feature_names_in_
    shuffled = frame[["b", "a", "noise", "signal"]]
    np.testing.assert_array_equal(loaded.predict(shuffled), model.predict(frame))
    with pytest.raises(ValueError, match=r"missing feature columns \['signal'\]"):
        loaded.predict(frame.drop(columns="signal"))
    with pytest.raises(TypeError, match="scores only"):
        RewardModel(kind="pointwise", max_epochs=2).fit(X, y, g).predict(X, return_std=True)
    with pytest.raises(ModelFileError, match="no saved reward model"):
        RewardModel.load(tmp_path / "empty")


def test_hidden_states_come_from_the_cache_without_loading_the_model_once_it_is_complete(pep_task, tmp_path):
    import pandas as pd

    from ttp.policy import HIDDEN_STATES, PolicyBackend
    from ttp.rewards.hidden_states import hidden_state_matrix

    class States(PolicyBackend):
        name = "fake"
        capabilities = frozenset({HIDDEN_STATES})

        def hidden_states(self, prompt, continuations):
            return [np.full(4, float(len(c))) for c in continuations]

    loads = []

    def get_backend():
        loads.append(1)
        return States()

    queries = list(pep_task.queries[:3])
    table = pd.DataFrame({"query_id": [q.id for q in queries for _ in range(2)], "candidate": [0, 1] * 3,
                          "text": ["a", "bb"] * 3})
    path = tmp_path / "hidden_states.npz"
    first = hidden_state_matrix(table, {q.id: q for q in queries}, pep_task.layout, get_backend, path)
    assert loads and first[:, 0].tolist() == [3.0, 4.0] * 3      # " a\n", " bb\n"
    loads.clear()
    again = hidden_state_matrix(table, {q.id: q for q in queries}, pep_task.layout, get_backend, path)
    assert not loads and np.array_equal(first, again)


@pytest.mark.parametrize("kind", ["bradley_terry", "thurstone"])
def test_pairwise_objectives_of_pools_without_a_winner_are_zero_not_nan(kind):
    """Pools whose candidates all tie (a policy that never hits the gold) give no pair: the loss
    is 0 with zero gradients, so training learns nothing rather than diverging."""
    import torch

    from ttp.rewards.objectives import OBJECTIVES, TrainingData, within_pool_pairs

    out = torch.randn(6, 2, requires_grad=True)
    pairs = within_pool_pairs(np.zeros(6), np.repeat([0, 1], 3))
    loss = OBJECTIVES[kind].loss(out, TrainingData(None, torch.zeros(6), pairs))
    loss.backward()
    assert float(loss) == 0.0 and not out.grad.any()
    model = RewardModel(kind="bradley_terry", max_epochs=5).fit(np.random.default_rng(0).normal(size=(6, 3)),
                                                                np.zeros(6), np.repeat([0, 1], 3))
    assert np.isfinite(model.predict(np.ones((2, 3)))).all()
