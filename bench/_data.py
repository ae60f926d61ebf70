"""Where the benchmarks find the full pep-titles (or pep-abstracts) set: ``--data PATH``, by
default the one ``ttp prepare`` derives from the PEP records shipped with ttp."""
import argparse
import sys
from pathlib import Path


def pep_task_dir(name: str = "pep-titles", data: Path | None = None) -> Path:
    """``data``, or the PEP task ttp derives; exits with a message where it is not a task."""
    if data is None:
        from ttp.tasks.peps import pep_task_dirs

        data = pep_task_dirs()[name]
    if not (data / "questions.json").exists():
        sys.exit(f"{name} not found at {data}: no questions.json there")
    return data


def pep_titles_dir(data: Path | None = None) -> Path:
    return pep_task_dir("pep-titles", data)


def pep_titles(description: str, argv=None) -> Path:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    return pep_titles_dir(parser.parse_args(argv).data)
