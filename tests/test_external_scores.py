"""Score files from other programs: validated against the run's pools, with messages that name
the file, the row and the field."""
import json

import pandas as pd
import pytest

from ttp.rewards.external import ScoreFileError, check_selector_name, read_scores

POOLS = pd.DataFrame({"query_id": ["a"] * 3 + ["b"] * 3, "candidate": [0, 1, 2] * 2})
GOOD = [{"query_id": q, "candidate": c, "score": 0.1 * c, "sd": 0.5} for q in ("a", "b") for c in range(3)]


def _jsonl(tmp_path, rows, name="scores.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_valid_jsonl_and_parquet_give_the_same_scores(tmp_path):
    from_jsonl = read_scores(_jsonl(tmp_path, GOOD), POOLS)
    pd.DataFrame(GOOD).to_parquet(tmp_path / "scores.parquet")
    from_parquet = read_scores(tmp_path / "scores.parquet", POOLS)
    pd.testing.assert_frame_equal(from_jsonl.reset_index(drop=True), from_parquet.reset_index(drop=True))
    assert list(from_jsonl.columns) == ["query_id", "candidate", "score", "sd"]


def _changed(index, **fields):
    rows = [dict(r) for r in GOOD]
    rows[index].update(fields)
    return rows


@pytest.mark.parametrize("rows, message", [
    ([{k: v for k, v in r.items() if k != "score"} for r in GOOD], r"missing field 'score'"),
    (_changed(2, query_id="zzz"), r"row 3: field 'query_id': 'zzz' is not a query"),
    (_changed(1, candidate=7), r"row 2: field 'candidate': 7 is not an index of the pool of 'a', which has 3"),
    (_changed(1, candidate=-1), r"row 2: field 'candidate'"),
    (_changed(4, candidate=0), r"row 5: candidate 0 of 'b' is scored twice"),
    (_changed(0, score=float("nan")), r"row 1: field 'score': nan is not a finite number"),
    (_changed(0, score="high"), r"row 1: field 'score': 'high' is not a finite number"),
    (_changed(3, sd=-0.1), r"row 4: field 'sd': -0.1 is not a finite non-negative number"),
    (GOOD[:5], r"the pool of 'b' has 3 candidates but 2 are scored \(candidate 2 is missing\)"),
    ([*GOOD[:2], "{broken", *GOOD[2:]], r"row 3: not a JSON object"),
], ids=["no score field", "unknown query", "candidate past the pool", "negative candidate", "duplicate",
        "NaN score", "text score", "negative sd", "pool size short", "broken line"])
def test_broken_score_files_name_file_row_and_field(tmp_path, rows, message):
    path = _jsonl(tmp_path, rows)
    with pytest.raises(ScoreFileError, match=message) as err:
        read_scores(path, POOLS)
    assert str(err.value).startswith(str(path))


def test_unreadable_files_and_taken_names(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ScoreFileError, match="not a readable Parquet file"):
        read_scores(tmp_path / "x.parquet", POOLS)
    with pytest.raises(ScoreFileError, match="give a .parquet or .jsonl file"):
        read_scores(_jsonl(tmp_path, GOOD, "scores.csv"), POOLS)
    with pytest.raises(ScoreFileError, match="taken"):
        check_selector_name("pointwise", {"pointwise"})
    with pytest.raises(ValueError, match="cannot name a folder"):
        check_selector_name("../x", set())
