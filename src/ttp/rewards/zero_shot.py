"""Zero-shot scorers: selectors built on the policy model itself, with no training.

* ``likelihood``: the mean token log-probability of the candidate under the personalized prompt;
* ``pmi``: log p(candidate | personalized prompt) − log p(candidate | plain prompt), how much the
  user's examples raise the candidate;
* ``judge``: log p(" yes") − log p(" no") when the model, shown the user's examples, the query
  and the candidate, is asked whether this user would have written it;
* ``profile_similarity``: the candidate's mean sentence-embedding similarity to the user's past
  outputs;
* ``mbr`` and ``mbr_profile`` (``ttp.rewards.consensus``): its mean ROUGE-L against the rest of
  its pool, and against the user's past outputs.  These two read no model.

A candidate is scored as the model would have produced it: a space, its text, and the newline
that ends it.  Teacher forcing shares each prompt's KV cache across the pool (``score`` of the
backend: the embedded llama.cpp model, or a server's echoed log-probabilities); the judge reads
the answer's log-odds from one logit row per candidate (``judge_scores``).  The scores
are stored beside imported ones (``RunFolder.external_scores``), so every later stage judges
them like the trained RMs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ttp.policy import NEXT_TOKEN_LOGPROBS, SCORE
from ttp.rewards.consensus import mbr_scores, profile_agreement
from ttp.rewards.features import EmbeddingCache, candidate_features
from ttp.tasks.data import ProfileLayout, Query
from ttp.tasks.prompts import QUERY_CHARS, PromptBuilder, as_generated, example_output, retrieve, split_instruction

ZERO_SHOT = ("likelihood", "pmi", "judge", "profile_similarity", "mbr", "mbr_profile")
NEEDS_MODEL = ("likelihood", "pmi", "judge")         # the scorers that ask the policy model


def judge_prompt(query: Query, layout: ProfileLayout, k: int = 3, convention: str = "ttp") -> str:
    """The question put to the model: this user's own outputs, the new query, then the candidate."""
    out, src = layout.output_label.lower(), layout.source_label.lower()
    examples = "".join(f"- {example_output(it, layout)}\n" for it in retrieve(query, k, convention))
    _, text = split_instruction(query.input)
    return (f"Here are {out}s that one user wrote:\n{examples}\n"
            f"The user's next {src}: {text[:QUERY_CHARS]}\n\nA proposed {out}:")


ANSWERS = (" yes", " no")


def judge_question(layout: ProfileLayout, candidate: str) -> str:
    """What follows the judge prompt for one candidate; the model's next token is the answer."""
    return f" {candidate}\nWould this user have written this {layout.output_label.lower()}? Answer yes or no.\nAnswer:"


def judge_scores(backend, prompt: str, layout: ProfileLayout, texts) -> list[float]:
    """log p(" yes") − log p(" no") after the judge question of each candidate.  A backend that
    gives next-token log-probabilities (llama.cpp) reads one logit row per candidate; any other
    scores both answers as continuations, which differ in their last token only, so the
    difference of their sums is the same log-odds."""
    questions = [judge_question(layout, t) for t in texts]
    if backend.can(NEXT_TOKEN_LOGPROBS):
        lp = backend.next_token_logprobs(prompt, questions, list(ANSWERS))
        return (lp[:, 0] - lp[:, 1]).tolist()
    yes = backend.score(prompt, [q + ANSWERS[0] for q in questions])
    no = backend.score(prompt, [q + ANSWERS[1] for q in questions])
    return [a[0] - b[0] for a, b in zip(yes, no)]


def zero_shot_scores(candidates: pd.DataFrame, queries: dict[str, Query], layout: ProfileLayout, backend,
                     cache: EmbeddingCache, shots: int = 3, convention: str = "ttp",
                     scorers: tuple[str, ...] = ZERO_SHOT, progress=None) -> pd.DataFrame:
    """``query_id, candidate`` and one column per scorer in ``scorers`` for every candidate;
    ``backend`` may be None where no scorer ``NEEDS_MODEL``."""
    unknown = sorted(set(scorers) - set(ZERO_SHOT))
    if unknown:
        raise ValueError(f"unknown zero-shot scorers {unknown}; choose from {ZERO_SHOT}")
    if set(scorers) & set(NEEDS_MODEL):
        backend.require(SCORE, "the likelihood, pmi and judge scorers")
    personalized = PromptBuilder(layout, "personalized", shots, convention)
    plain = PromptBuilder(layout, "plain", shots, convention)
    if "profile_similarity" in scorers:
        similarity = candidate_features(candidates, queries, cache, k=shots, convention=convention)["sim_profile_mean"]
    blocks = []
    for query_id, pool in candidates.groupby("query_id", sort=False):
        query = queries[query_id]
        texts = [as_generated(t) for t in pool["text"]]
        block = {"query_id": query_id, "candidate": pool["candidate"].to_numpy()}
        if {"likelihood", "pmi"} & set(scorers):
            with_profile = backend.score(personalized(query), texts)
            block["likelihood"] = [lp / max(n, 1) for lp, n in with_profile]
        if "pmi" in scorers:
            without = backend.score(plain(query), texts)
            block["pmi"] = [a[0] - b[0] for a, b in zip(with_profile, without)]
        if "judge" in scorers:
            block["judge"] = judge_scores(backend, judge_prompt(query, layout, shots, convention), layout,
                                          pool["text"])
        if "profile_similarity" in scorers:
            block["profile_similarity"] = similarity.loc[pool.index].to_numpy()
        if "mbr" in scorers:
            block["mbr"] = mbr_scores(pool["text"].tolist(), convention)
        if "mbr_profile" in scorers:
            block["mbr_profile"] = profile_agreement(pool["text"].tolist(), query, convention)
        blocks.append(pd.DataFrame(block)[["query_id", "candidate", *scorers]])
        if progress:
            progress()
    table = pd.concat(blocks, ignore_index=True)
    if not np.isfinite(table[list(scorers)].to_numpy()).all():
        raise ValueError("a zero-shot score came out non-finite; check the pools' texts")
    return table
