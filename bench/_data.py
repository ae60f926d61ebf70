"""Where the benchmarks find the full pep-titles set: ``--data PATH``, by default the shared
folder beside the repository."""
import argparse
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pep-titles"


def pep_titles(description: str, argv=None) -> Path:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT, help=f"pep-titles folder (default {DEFAULT})")
    data = parser.parse_args(argv).data
    if not (data / "questions.json").exists():
        sys.exit(f"pep-titles not found at {data}; pass --data PATH (the set is not shipped with the repository)")
    return data
