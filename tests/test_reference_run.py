"""The analysis stages write, byte for byte, what they wrote for the same scores when this
fixture was made (tests/data/reference-run/: the PEP-titles / personalized cell of the tests'
small run, SMALL_RUN in conftest.py): a refactoring that changes a figure fails here."""
import json
import shutil
from pathlib import Path

import pytest

from ttp.analysis.pools import Pools
from ttp.files import write_json_atomic
from ttp.runs.evaluation import evaluate_selectors
from ttp.runs.pipeline import Pipeline
from ttp.runs.results import read_table

PEP_TITLES_MINI = Path(__file__).resolve().parent / "data" / "pep-titles-mini"

REFERENCE = PEP_TITLES_MINI.parent / "reference-run"
CELL = ("PEP-titles", "personalized")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference") / "run"
    (root / CELL[0] / CELL[1]).mkdir(parents=True)
    config = json.loads((REFERENCE / "config.json").read_text())
    config["tasks"][0]["path"] = str(PEP_TITLES_MINI)
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(REFERENCE / "split.json", root / CELL[0] / "split.json")
    for part in ("validation", "test"):
        shutil.copy(REFERENCE / f"{part}_scores.parquet", root / CELL[0] / CELL[1] / f"{part}_scores.parquet")
    pipeline = Pipeline.resume(root, show_progress=False)
    pipeline.run("diagnose")
    pipeline.run("allocate")
    return pipeline


def test_reward_evaluation_is_unchanged(reference_run, tmp_path):
    folder, config = reference_run.folder, reference_run.config
    pools = Pools.from_frame(read_table(folder.scores(*CELL, "test"), "the reference fixture"))
    write_json_atomic(tmp_path / "reward_eval.json", evaluate_selectors(pools, config.bootstrap, config.seed))
    assert (tmp_path / "reward_eval.json").read_bytes() == (REFERENCE / "reward_eval.json").read_bytes()


@pytest.mark.parametrize("name", ["diagnosis.json", "allocation.json", "online_rules.json"])
def test_diagnosis_and_allocation_are_unchanged(reference_run, name):
    written = reference_run.folder.root / CELL[0] / CELL[1] / name
    assert written.read_bytes() == (REFERENCE / name).read_bytes()
