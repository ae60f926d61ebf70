"""Prompts: the user's most relevant profile items (BM25) as few-shot examples, then the query.

The non-personalized policy sees the query alone, so every experiment compares two policies.
"""
from __future__ import annotations

from dataclasses import dataclass

import bm25s

from ttp.data import ProfileItem, Query

POLICIES = ("personalized", "plain")
SOURCE_CHARS = 400  # per few-shot example, so k examples fit a small model's context


def _turn(user_text: str) -> str:
    # Gemma's chat template; the model's reply starts right after the last line
    return f"<start_of_turn>user\n{user_text}<end_of_turn>\n<start_of_turn>model\n"


def retrieve(query: Query, k: int) -> list[ProfileItem]:
    """The ``k`` profile items whose text is most similar to the query input (BM25)."""
    items = list(query.profile)
    if len(items) <= k:
        return items
    corpus = [f"{it.output} {it.source}" for it in items]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([query.input], stopwords="en", show_progress=False)
    if not tokens.vocab:
        return items[:k]
    ranked, _ = retriever.retrieve(tokens, k=k, show_progress=False)
    return [items[i] for i in ranked[0]]


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the prompt of one policy; ``k`` is the number of retrieved few-shot examples."""

    policy: str = "personalized"
    k: int = 3

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    def __call__(self, query: Query) -> str:
        instruction = f"{query.input.strip()}\nAnswer with the text only, on one line."
        if self.policy == "plain":
            return _turn(instruction)
        shots = "\n\n".join(
            f"Text: {it.source[:SOURCE_CHARS].strip()}\nAnswer: {it.output.strip()}"
            for it in retrieve(query, self.k)
        )
        return _turn(f"Here is how this user wrote earlier answers for similar texts:\n\n{shots}\n\n"
                     f"Write the answer in the same style as this user.\n{instruction}")
