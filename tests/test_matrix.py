"""``ttp matrix`` (``ttp.runs.matrix``): every cell of tasks x models x promptings, run with the
real model and a real tune, one summary row per cell read back from the runs, and a rerun that
draws and trains nothing again."""
import json

import pytest

from ttp.runs.config import ConfigError
from ttp.runs.matrix import Matrix, MatrixConfig, MatrixTask, best_law
from ttp.runs.pipeline import Pipeline
from ttp.tuning import TuneConfig
from ttp.tuning.lora import LoraConfig


def test_a_matrix_refuses_a_tune_that_would_hold_out_other_users(pep_titles_dir):
    with pytest.raises(ValueError, match="split and seed"):
        MatrixConfig(tasks=(MatrixTask(path=str(pep_titles_dir)),), seed=1)
    with pytest.raises(ValueError, match="models"):
        MatrixConfig(tasks=(MatrixTask(path=str(pep_titles_dir)),), models=("base", "large"))


@pytest.mark.slow
def test_the_matrix_runs_each_cell_sums_it_up_and_resumes(tmp_path, pep_titles_dir):
    config = MatrixConfig(tasks=(MatrixTask(path=str(pep_titles_dir), max_queries_per_user=2),), pool_size=4,
                          tune=TuneConfig(max_examples=4, lora=LoraConfig(accumulation=2)))
    matrix = Matrix(config, tmp_path / "matrix")
    table = matrix.run()
    rows = json.loads((tmp_path / "matrix" / "summary.json").read_text())
    assert [(r["model"], r["prompting"]) for r in rows] == [("base", "personalized"), ("base", "plain"),
                                                            ("tuned", "personalized"), ("tuned", "plain")]
    assert len(table.rows) == 4
    for row in rows:
        assert row["n"] == 4 and row["oracle"][1] <= row["oracle"][0] <= row["oracle"][2]
        assert row["oracle"][0] >= row["mu_bar"] and row["samples_per_second"] > 0
        low_high = row["best_rm_share"]
        assert low_high[1] <= low_high[0] <= low_high[2]
        assert 0 <= row["law_fits"] <= row["selectors"]
        profile = row["candidates"]
        assert 0 < profile["tokens"] <= 24 and all(0 <= profile[k] <= 1 for k in ("at_cap", "empty", "zero_utility"))
    # the tuned cells sampled the tuned GGUF, a policy of their own
    tuned_run = json.loads((tmp_path / "matrix" / "PEP-titles--tuned" / "config.json").read_text())
    assert tuned_run["engine"]["model_path"] == "../models/PEP-titles-tuned"
    pools = {model: (tmp_path / "matrix" / f"PEP-titles--{model}" / "PEP-titles" / "plain" / "pools.jsonl").read_text()
             for model in ("base", "tuned")}
    assert pools["base"] != pools["tuned"]
    assert (tmp_path / "matrix" / "matrix.png").stat().st_size > 0
    assert "| PEP-titles | tuned | plain |" in (tmp_path / "matrix" / "summary.md").read_text()

    # a rerun resumes: nothing is drawn, timed or tuned again, and the summary is the same
    sampling = (tmp_path / "matrix" / "sampling.json").read_text()
    tuned_model = (tmp_path / "matrix" / "models" / "PEP-titles-tuned" / "tune.json").stat().st_mtime_ns
    again = Matrix(config, tmp_path / "matrix").run()
    assert again.rows == table.rows
    assert (tmp_path / "matrix" / "sampling.json").read_text() == sampling
    assert (tmp_path / "matrix" / "models" / "PEP-titles-tuned" / "tune.json").stat().st_mtime_ns == tuned_model
    with pytest.raises(ConfigError, match="another matrix"):
        Matrix(MatrixConfig(tasks=config.tasks, pool_size=8, tune=config.tune), tmp_path / "matrix")

    # a moved matrix folder still finds its tuned model and resumes as it is
    moved = tmp_path / "elsewhere" / "matrix"
    moved.parent.mkdir()
    (tmp_path / "matrix").rename(moved)
    assert Matrix(config, moved).run().rows == table.rows
    tuned = Pipeline.resume(moved / "PEP-titles--tuned", show_progress=False)
    assert tuned.engine.model_path == str((moved / "models" / "PEP-titles-tuned").resolve())


def test_the_best_law_is_the_one_within_two_standard_errors_for_the_most_selectors():
    import numpy as np

    from ttp.analysis.scaling import PER_QUERY_LAWS

    class Diagnosis:
        def __init__(self, errors_in_se, shares):
            self.law_errors = {law: {"max_share_of_oracle_gain": s} for law, s in zip(PER_QUERY_LAWS, shares)}
            self._in_se = dict(zip(PER_QUERY_LAWS, errors_in_se))

        def error_in_se(self, law):
            return self._in_se[law]

    first, second, third = PER_QUERY_LAWS
    diagnoses = {"random": Diagnosis([9, 9, 9], [1, 1, 1]),
                 "a": Diagnosis([1.0, 3.0, 1.5], [0.05, 0.01, 0.04]),
                 "b": Diagnosis([2.5, 1.0, 1.9], [0.20, 0.02, 0.03]),
                 "c": Diagnosis([1.2, 1.1, None], [0.06, 0.02, 0.09])}
    # first: a, c within 2 SE; second: b, c; third: a, b (c has no SE): a tie of 2, broken by the median error
    law, fits, error = best_law(diagnoses)
    medians = {first: np.median([0.05, 0.20, 0.06]), second: np.median([0.01, 0.02, 0.02]),
               third: np.median([0.04, 0.03, 0.09])}
    assert (law, fits) == (second, 2) and error == pytest.approx(medians[second])


def test_a_cells_candidate_profile_counts_the_cap_empty_and_zero_candidates(tmp_path):
    import pandas as pd

    from ttp.runs.matrix import candidate_profile

    path = tmp_path / "candidates.parquet"
    pd.DataFrame({"text": ["", "a title", "a longer title here", "x"], "n_tokens": [0, 2, 8, 8],
                  "rougeL": [0.0, 0.5, 0.25, 0.0]}).to_parquet(path)
    assert candidate_profile(path, max_tokens=8) == {"tokens": 4.5, "at_cap": 0.5, "empty": 0.25, "zero_utility": 0.5}
