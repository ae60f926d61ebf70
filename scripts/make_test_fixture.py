"""Derive the committed test fixtures ``tests/data/pep-titles-mini`` and ``pep-abstracts-mini``
from the full sets.

    python scripts/make_test_fixture.py [pep-titles|pep-abstracts [PATH]]   (default: both, from
                                                                             the sets ttp derives)

A seeded choice of 12 users (authors), 5 queries each, the same in both; every profile keeps
its first 8 items, with their abstracts cut at 500 characters (the query's own gold abstract,
in pep-abstracts, is kept whole), so each fixture stays well under 1 MB while keeping its
layout (LaMP-5, LongLaMP abstract generation) exactly.  Rerunning it rewrites the same files."""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = ("pep-titles", "pep-abstracts")
USERS, QUERIES_PER_USER, PROFILE_ITEMS, ABSTRACT_CHARS = 12, 5, 8, 500


def main(name: str, source: Path | None = None) -> None:
    if source is None:
        from ttp.tasks.peps import pep_task_dirs

        source = pep_task_dirs()[name]
    if not (source / "questions.json").exists():
        sys.exit(f"{name} not found at {source}; pass its folder after the set's name")
    target = ROOT / "tests" / "data" / f"{name}-mini"
    questions = json.loads((source / "questions.json").read_text(encoding="utf-8"))
    outputs = json.loads((source / "outputs.json").read_text(encoding="utf-8"))
    users = sorted({q["user"] for q in questions})
    chosen = sorted(np.random.default_rng(0).choice(users, USERS, replace=False).tolist())
    kept = []
    for user in chosen:
        for q in [q for q in questions if q["user"] == user][:QUERIES_PER_USER]:
            profile = [{**p, "abstract": p["abstract"][:ABSTRACT_CHARS]} for p in q["profile"][:PROFILE_ITEMS]]
            kept.append({**q, "profile": profile})
    ids = {q["id"] for q in kept}
    golds = {"task": outputs["task"], "golds": [g for g in outputs["golds"] if g["id"] in ids]}
    target.mkdir(parents=True, exist_ok=True)
    (target / "questions.json").write_text(json.dumps(kept, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (target / "outputs.json").write_text(json.dumps(golds, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(kept)} queries of {len(chosen)} users -> {target}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] not in SETS:
        sys.exit(f"the set must be one of {', '.join(SETS)}, got {sys.argv[1]!r}")
    for name in sys.argv[1:2] or SETS:
        main(name, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
