"""Reward-model features on real pep-titles queries with the real packaged encoder."""
import math

import numpy as np
import pandas as pd
import pytest

from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features


@pytest.fixture(scope="module")
def table(pep_task):
    query = pep_task.queries[0]
    other = next(q for q in pep_task.queries if q.user != query.user)
    texts = [query.profile[0].output, other.gold, "", " ".join(query.input.split(":", 1)[1].split()[:8])]
    frame = pd.DataFrame({"query_id": query.id, "user": query.user, "candidate": range(4), "text": texts,
                          "logprob": [-4.0, -8.0, math.nan, -2.0], "n_tokens": [4, 4, 0, 8]})
    return query, frame


@pytest.mark.slow
def test_features_see_the_user_and_the_text(table, pep_task, tmp_path):
    query, frame = table
    feats = candidate_features(frame, pep_task.by_id(), EmbeddingCache(tmp_path / "e.npz"))
    assert list(feats.columns) == list(FEATURES) and len(feats) == 4
    # the user's own past title is maximally similar to the profile; another user's gold is not
    assert feats.loc[0, "sim_profile_max"] == pytest.approx(1.0, abs=1e-5)
    assert feats.loc[1, "sim_profile_max"] < 0.95
    assert feats.loc[2, "empty"] == 1 and feats.loc[0, "empty"] == 0
    assert feats.loc[2, "log_len_ratio"] < feats.loc[0, "log_len_ratio"]
    # copy rates: a candidate cut from the input copies all of it, an empty one none, so their
    # gaps to the user's own copy rate add up to one
    assert feats.loc[3, "copy_rate_gap"] + feats.loc[2, "copy_rate_gap"] == pytest.approx(1.0)
    np.testing.assert_allclose(feats["logprob_per_token"], [-1.0, -2.0, 0.0, -0.25])


@pytest.mark.slow
def test_embedding_cache_persists_and_reloads(table, pep_task, tmp_path):
    _, frame = table
    path = tmp_path / "embeddings.npz"
    first = EmbeddingCache(path)
    vectors = first.encode(["a title", "another title"])
    assert path.exists()
    again = EmbeddingCache(path)
    np.testing.assert_array_equal(again.encode(["a title", "another title"]), vectors)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unknown_query_is_named(table, pep_task):
    _, frame = table
    with pytest.raises(KeyError, match="not in the task"):
        candidate_features(frame.assign(query_id="nope"), pep_task.by_id(), EmbeddingCache())


def test_a_cache_that_does_not_persist_reads_the_file_and_never_writes_it(tmp_path):
    path = tmp_path / "embeddings.npz"
    EmbeddingCache(path).encode(["kept"])
    before = path.read_bytes()
    reader = EmbeddingCache(path, persist=False)
    reader.encode(["kept", "new text"])
    assert path.read_bytes() == before
    assert EmbeddingCache(path, persist=False)._vectors.keys() == EmbeddingCache(path)._vectors.keys()
