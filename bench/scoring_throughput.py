"""Reward-model scoring throughput: features plus a trained probabilistic RM, candidates per
second, with a cold embedding cache and with a warm one, side by side in one run.

Candidates are real titles: for each of 100 pep-titles queries, the gold titles of 16 other
queries."""
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _data import pep_titles

from ttp.tasks.data import load_task
from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
from ttp.rewards.models import RewardModel
from ttp.tasks.utility import rouge

QUERIES, M = 100, 16


def candidate_table(task):
    rng = np.random.default_rng(0)
    golds = [q.gold for q in task.queries]
    rows = []
    for q in task.queries[:QUERIES]:
        texts = [golds[i] for i in rng.choice(len(golds), M, replace=False)]
        u = rouge(texts, q.gold)["rougeL"]
        rows += [{"query_id": q.id, "user": q.user, "candidate": j, "text": t, "logprob": -10.0,
                  "n_tokens": 8, "rougeL": u[j]} for j, t in enumerate(texts)]
    return pd.DataFrame(rows)


def score(table, queries, cache, model):
    t0 = time.perf_counter()
    feats = candidate_features(table, queries, cache)
    model.predict(feats, return_std=True)
    return time.perf_counter() - t0, feats


def main():
    task = load_task(pep_titles(__doc__.splitlines()[0]))
    table = candidate_table(task)
    queries = task.by_id()
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.npz")
        cache.encode(["warm up the encoder"])
        model = RewardModel(kind="probabilistic", max_epochs=5)
        cold, feats = score(table, queries, cache, model.fit(
            candidate_features(table.head(M * 5), queries, EmbeddingCache())[list(FEATURES)].to_numpy(np.float32),
            table.head(M * 5)["rougeL"].to_numpy(np.float32), table.head(M * 5)["query_id"].to_numpy()))
        warm, _ = score(table, queries, cache, model)
    n = len(table)
    print(f"{n} candidates ({QUERIES} queries x {M}), features + probabilistic RM")
    print(f"cold embedding cache: {n / cold:8.0f} candidates/s")
    print(f"warm embedding cache: {n / warm:8.0f} candidates/s")
    print(f"warm / cold: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
