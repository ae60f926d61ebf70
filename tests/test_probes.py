"""The helpers of scripts/ behind figures in docs/results.md (the scripts are not a package, so
they are loaded from their files)."""
import importlib.util
from pathlib import Path

import numpy as np
from scipy.stats import norm, rankdata


def _script(name: str):
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_estimate_of_quality_c_correlates_c_with_the_values_in_normal_scores():
    probes = _script("allocation_probes")
    rng = np.random.default_rng(0)
    values = np.r_[np.zeros(30), rng.lognormal(size=90)]   # a tied block, as κ_q has where a pool is flat
    assert np.array_equal(probes.estimate_of_quality(values, 1.0, rng), values)
    assert np.unique(probes.estimate_of_quality(values, 0.0, rng)).tolist() == [np.quantile(values, 0.5,
                                                                                            method="inverted_cdf")]

    def normal_scores(x):
        return norm.ppf((rankdata(x) - 0.5) / len(x))

    for quality in (0.25, 0.5, 0.75, 0.9):
        estimates = [probes.estimate_of_quality(values, quality, rng) for _ in range(400)]
        correlation = np.mean([np.corrcoef(normal_scores(e), normal_scores(values))[0, 1] for e in estimates])
        assert abs(correlation - quality) < 0.04, (quality, correlation)
        # each estimate is one of the values, so the rule is told numbers on κ_q's own scale
        assert np.isin(estimates[0], values).all()

    # and it is the best guess, not a noisy draw: its normal scores spread as c, not as 1
    distinct = rng.lognormal(size=120)
    level = dict(zip(distinct, normal_scores(distinct)))
    for quality in (0.25, 0.5, 0.75):
        spread = np.mean([np.std([level[v] for v in probes.estimate_of_quality(distinct, quality, rng)])
                          for _ in range(100)])
        assert abs(spread - quality) < 0.05, (quality, spread)
