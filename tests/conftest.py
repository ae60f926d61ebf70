import shutil
from pathlib import Path

import pytest

PEP_TITLES_MINI = Path(__file__).resolve().parent / "data" / "pep-titles-mini"
# a small finished run: 8 users x 2 queries, pools of 4 titles of at most 10 tokens
SMALL_RUN = ["--pool-size", "4", "--max-users", "8", "--max-queries-per-user", "2", "--max-tokens", "10"]


@pytest.fixture(scope="session")
def pep_titles_dir() -> Path:
    """The committed pep-titles subset (tests/data/README.md): 12 users, 60 queries."""
    return PEP_TITLES_MINI


@pytest.fixture(scope="session")
def pep_abstracts_dir() -> Path:
    """The committed pep-abstracts subset (tests/data/README.md): pep-titles-mini's queries, reversed."""
    return PEP_TITLES_MINI.parent / "pep-abstracts-mini"


@pytest.fixture(scope="session")
def pep_task(pep_titles_dir):
    from ttp.tasks.data import load_task

    return load_task(pep_titles_dir)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server for this test session (the pgserver wheel: PostgreSQL 16 binaries),
    stopped at its end; a fresh database per call of ``fresh_database``."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def fresh_database(postgres_url):
    """A new, empty database on the session's PostgreSQL server; its URL."""
    import uuid

    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.replace("/postgres?", f"/{name}?")


@pytest.fixture(scope="session")
def llama_reference():
    """llama.cpp's own passes over the embedded model (tests/llama_reference.py)."""
    from llama_reference import LlamaReference

    reference = LlamaReference()
    yield reference
    reference.llm.close()


@pytest.fixture(scope="session")
def small_run_template(tmp_path_factory, pep_titles_dir) -> Path:
    """Every stage of `ttp run` with the real model on SMALL_RUN, done once per session; a test
    module takes its own copy (``small_run``), so that what one module adds no other sees."""
    from typer.testing import CliRunner

    from ttp.cli import app

    out = tmp_path_factory.mktemp("template") / "run"
    result = CliRunner().invoke(app, ["run", "--task", str(pep_titles_dir), "--out", str(out), *SMALL_RUN])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture(scope="module")
def small_run(small_run_template, tmp_path_factory) -> Path:
    return Path(shutil.copytree(small_run_template, tmp_path_factory.mktemp("run") / "run"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 4-layer Gemma 3 with random weights and a word-level tokenizer (tests/tiny_model.py)."""
    from tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-gemma"))
