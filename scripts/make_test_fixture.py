"""Derive the committed test fixture ``tests/data/pep-titles-mini`` from the full pep-titles set.

    python scripts/make_test_fixture.py [PATH_TO_PEP_TITLES]   (default: the set ttp derives)

A seeded choice of 12 users (authors), 5 queries each; every profile keeps its first 8 items,
with abstracts cut at 500 characters, so the fixture stays well under 1 MB while keeping the
LaMP-5 layout exactly.  Rerunning it rewrites the same files."""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "data" / "pep-titles-mini"
USERS, QUERIES_PER_USER, PROFILE_ITEMS, ABSTRACT_CHARS = 12, 5, 8, 500


def main(source: Path | None = None) -> None:
    if source is None:
        from ttp.tasks.peps import pep_task_dirs

        source = pep_task_dirs()["pep-titles"]
    if not (source / "questions.json").exists():
        sys.exit(f"pep-titles not found at {source}; pass its folder as the first argument")
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
    TARGET.mkdir(parents=True, exist_ok=True)
    (TARGET / "questions.json").write_text(json.dumps(kept, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (TARGET / "outputs.json").write_text(json.dumps(golds, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(kept)} queries of {len(chosen)} users -> {TARGET}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
