"""Scoring throughput of every reward-model family and zero-shot scorer, warm (models loaded,
caches filled by a first pass), in candidates per second, side by side in one run; then, for
the same prompts, the time to score a sampled pool against the time to sample it.

Candidates are real titles: for each of 10 pep-titles queries, the gold titles of 16 other
queries.  Throughput does not depend on what a model learnt, so each trained family is fitted
briefly on the same candidates."""
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _data import pep_titles

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend
from ttp.rewards.cross_encoder import CrossEncoderConfig, CrossEncoderRewardModel, encode, pair_texts
from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
from ttp.rewards.hidden_states import hidden_state_matrix
from ttp.rewards.models import RewardModel
from ttp.rewards.zero_shot import zero_shot_scores
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder
from ttp.tasks.utility import rouge

QUERIES, M = 10, 16


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


def warm_rate(n: int, work) -> float:
    work()                       # loads models, fills caches
    start = time.perf_counter()
    work()
    return n / (time.perf_counter() - start)


def main():
    task = load_task(pep_titles(__doc__.splitlines()[0]))
    table, queries = candidate_table(task), task.by_id()
    y, groups = table["rougeL"].to_numpy(np.float32), table["query_id"].to_numpy()
    backend = LlamaCppBackend(n_ctx=8192, max_sequences=M)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.npz")
        features = RewardModel(kind="probabilistic", max_epochs=3).fit(
            candidate_features(table, queries, cache)[list(FEATURES)], y, groups)
        rates["features MLP (embeddings + features + MLP)"] = warm_rate(len(table), lambda: features.predict(
            candidate_features(table, queries, cache)[list(FEATURES)], return_std=True))

        # the hidden-state pass itself is the cost; a fresh cache file each time measures it
        def hidden(path=[0]):
            path[0] += 1
            return hidden_state_matrix(table, queries, task.layout, lambda: backend, Path(tmp) / f"h{path[0]}.npz")

        states = hidden()
        mlp = RewardModel(kind="probabilistic", hidden=64, max_epochs=3).fit(states, y, groups)
        rates["hidden_state MLP (policy pass + MLP)"] = warm_rate(len(table), lambda: mlp.predict(hidden(),
                                                                                                 return_std=True))
        config = CrossEncoderConfig(kind="probabilistic", max_epochs=1)
        pairs = pair_texts(table, queries)
        encoder = CrossEncoderRewardModel(config).fit(encode(pairs, config), y, groups)
        rates["cross_encoder (MiniLM, 96 tokens)"] = warm_rate(len(table), lambda: encoder.predict(pairs,
                                                                                                  return_std=True))
    for scorer in ("likelihood", "pmi", "judge"):
        rates[f"zero-shot {scorer}"] = warm_rate(len(table), lambda: zero_shot_scores(
            table, queries, task.layout, backend, EmbeddingCache(), scorers=(scorer,)))
    print(f"warm scoring throughput, {len(table)} candidates ({QUERIES} queries x {M}), 2 CPU threads:")
    for name, rate in rates.items():
        print(f"  {name:48s} {rate:8.1f} candidates/s")

    # a sampled pool: how long it takes to draw it, to score it (likelihood), to read its states
    builder = PromptBuilder(task.layout, "personalized")
    backend.prompt_cache = False   # every call evaluates its prompt, as a fresh query would
    sample_s = score_s = hidden_s = 0.0
    for i, query in enumerate(task.queries[:QUERIES]):
        prompt = builder(query)
        start = time.perf_counter()
        pool = backend.sample(prompt, SamplingParams(n=M, max_tokens=24, seed=i))
        sample_s += time.perf_counter() - start
        texts = [f" {c.text}\n" for c in pool]
        start = time.perf_counter()
        backend.score(prompt, texts)
        score_s += time.perf_counter() - start
        start = time.perf_counter()
        backend.hidden_states(prompt, texts)
        hidden_s += time.perf_counter() - start
    print(f"pool of {M}, mean over {QUERIES} prompts: sampling {sample_s / QUERIES:.2f} s, "
          f"scoring (likelihood) {score_s / QUERIES:.2f} s = {score_s / sample_s:.2f}x sampling, "
          f"hidden states {hidden_s / QUERIES:.2f} s = {hidden_s / sample_s:.2f}x sampling (goal: scoring <= 2x)")


if __name__ == "__main__":
    main()
