import numpy as np
import pytest

from ttp.analysis.online import choose_online


class Pool:
    """Candidates whose scores are given; records how many were drawn."""

    def __init__(self, scores):
        self.scores, self.drawn = list(scores), 0

    def draw(self, k):
        self.drawn += k
        return [f"c{i}" for i in range(self.drawn - k, self.drawn)]

    def score(self, texts):
        s = np.array([self.scores[int(t[1:])] for t in texts])
        return s, s, np.full(len(s), 0.1)


@pytest.mark.parametrize("rule", ["law", "expected_improvement"])
def test_collapsed_scores_stop_after_the_pilot(rule):
    pool = Pool([0.5] * 16)
    d = choose_online(pool.draw, pool.score, budget=16, kappa=1.0, dataset_spread=0.1, min_gain=1e-9, rule=rule)
    assert d.samples == 4 and "collapsed" in d.stopped_because


def test_informative_scores_use_the_budget_and_pick_the_best():
    rng = np.random.default_rng(0)
    pool = Pool(rng.normal(0, 0.2, 16))
    d = choose_online(pool.draw, pool.score, budget=10, kappa=1.0, dataset_spread=0.2, min_gain=1e-6)
    assert d.samples == 10 and d.stopped_because == "budget spent"
    assert d.score == max(pool.scores[:10])


def test_small_predicted_gain_stops_early():
    rng = np.random.default_rng(1)
    pool = Pool(rng.normal(0, 0.2, 16))
    d = choose_online(pool.draw, pool.score, budget=16, kappa=0.01, dataset_spread=0.2, min_gain=1e-3)
    assert d.samples < 16 and "below" in d.stopped_because
    with pytest.raises(ValueError, match="budget"):
        choose_online(pool.draw, pool.score, budget=0, kappa=1, dataset_spread=1)
