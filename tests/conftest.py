from pathlib import Path

import pytest

PEP_TITLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pep-titles"


@pytest.fixture(scope="session")
def pep_titles_dir() -> Path:
    if not (PEP_TITLES / "questions.json").exists():
        pytest.fail(f"the pep-titles set is expected at {PEP_TITLES} (the shared/ folder beside the repository)")
    return PEP_TITLES


@pytest.fixture(scope="session")
def pep_task(pep_titles_dir):
    from ttp.tasks.data import load_task

    return load_task(pep_titles_dir)
