from pathlib import Path

import pytest

PEP_TITLES_MINI = Path(__file__).resolve().parent / "data" / "pep-titles-mini"


@pytest.fixture(scope="session")
def pep_titles_dir() -> Path:
    """The committed pep-titles subset (tests/data/README.md): 12 users, 60 queries."""
    return PEP_TITLES_MINI


@pytest.fixture(scope="session")
def pep_task(pep_titles_dir):
    from ttp.tasks.data import load_task

    return load_task(pep_titles_dir)
