"""Prompts: the user's most relevant profile items (BM25) as few-shot examples, then the query.

Limits: ``SOURCE_CHARS`` and ``QUERY_CHARS`` below, and each layout's ``example_chars``.  The default model is a
base (not chat-tuned) model, so prompts are completion-style: the
task's instruction, then ``Label: source`` / ``Label: output`` pairs, ending on the output
label.  The non-personalized policy shows no profile items, so every experiment compares two
policies on the same queries.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from ttp.tasks.data import ProfileItem, ProfileLayout, Query

Prompting = Literal["personalized", "plain"]
PROMPT_STYLES = get_args(Prompting)
# every text that enters a prompt is cut to a limit, so k examples fit a small model's context
# and no single over-long record can make a prompt overflow it
SOURCE_CHARS = 400   # the source of each few-shot example
QUERY_CHARS = 1500   # the query's own text
SAME_RECORD_CHARS = 100   # the shortest opening that ``profile_for`` takes for the same record
# LaMP inputs open with an instruction ("Generate a title for the following abstract of a
# paper: <text>"), LongLaMP's quote their text ('Generate an abstract for the title "<text>"',
# perhaps followed by more); the prompt shows the instruction once on top and the text in the
# example format
INSTRUCTION = re.compile(r"^\s*((?:generate|write|compose|create)\b[^:\"]{0,150}):\s*(.*)$", re.I | re.S)
QUOTED = re.compile(r"^\s*((?:generate|write|compose|create)\b[^:\"]{0,150}?)\s*\"([^\"]+)\"\s*(.*)$", re.I | re.S)


def example_output(item: ProfileItem, layout: ProfileLayout) -> str:
    """A profile item's output as an example shows it: at most ``layout.example_chars``, cut
    after its last full sentence where one ends in the second half (a long output's example
    then ends as a paragraph does), else at the limit."""
    text, limit = item.output.strip(), layout.example_chars
    if len(text) <= limit:
        return text
    end = text[:limit].rfind(". ")
    return text[:end + 1] if end >= limit // 2 else text[:limit].strip()


def split_instruction(query_input: str) -> tuple[str, str]:
    """``(instruction, text)`` of a LaMP-style input; no instruction gives ``("", input)``."""
    match = INSTRUCTION.match(query_input)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    match = QUOTED.match(query_input)
    if match:
        return match.group(1).strip(), f"{match.group(2).strip()} {match.group(3).strip()}".strip()
    return "", query_input.strip()


def as_generated(candidate: str) -> str:
    """A candidate as the policy wrote it after a prompt: a space, its text, and the newline that
    ended it; teacher forcing scores and reads candidates so."""
    return f" {candidate}\n"


def record_text(text: str) -> str:
    """What two records are compared by: the text after any instruction, spaces collapsed."""
    return " ".join(split_instruction(text)[1].split())


def same_record(a: str, b: str) -> bool:
    """Whether two ``record_text``s are one record: the same text, or one a shortened copy of
    the other (profiles often hold a record's source cut to a few hundred characters), long
    enough that a shared opening is no accident."""
    short, long = sorted((a, b), key=len)
    return short == long or (len(short) >= SAME_RECORD_CHARS and long.startswith(short))


def profile_for(profile: tuple[ProfileItem, ...], query_input: str) -> tuple[ProfileItem, ...]:
    """The profile a new input sees: the user's items but those written for this very input, as
    a LaMP query's profile holds everything the user wrote except the record asked for."""
    own = record_text(query_input)
    return tuple(item for item in profile if not same_record(record_text(item.source), own))


@lru_cache(maxsize=512)
def _index(items: tuple[ProfileItem, ...], convention: str):
    """The BM25 index of one profile, built once per distinct profile: a server retrieving for
    the same user again reuses it, and a new item makes a new profile, so a new index."""
    # Imported here, not at the top: bm25s imports numba where it is installed, and vLLM's CPU
    # engine fails to start when the main module (re-imported by its spawned processes) pulled
    # numba in, as `ttp` would through this module.
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
    corpus = [f"{it.output} {it.source}" for it in items]
    if convention == "lamp":
        retriever = bm25s.BM25(method="robertson")   # rank_bm25's BM25Okapi, which LaMP uses
        retriever.index([text.split() for text in corpus], show_progress=False)
    else:
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    return retriever


def forget_indexes() -> None:
    """Drop every cached profile index: a server does so once a user's data is erased."""
    _index.cache_clear()


def retrieve(query: Query, k: int, convention: str = "ttp") -> list[ProfileItem]:
    """The ``k`` profile items whose text is most similar to the query (BM25).

    ``ttp``: the whole input, lower-cased, English stopwords removed.  ``lamp``: as LaMP's
    code does, whitespace tokens of the text after the task instruction, against whitespace
    tokens of each item's output and source."""
    items = tuple(query.profile)
    if len(items) <= k:
        return list(items)
    import bm25s

    if convention == "lamp":
        tokens = [split_instruction(query.input)[1].split()]
        if not tokens[0]:
            return list(items[:k])
    else:
        tokens = bm25s.tokenize([query.input], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return list(items[:k])
    ranked, _ = _index(items, convention).retrieve(tokens, k=k, show_progress=False)
    return [items[i] for i in ranked[0]]


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the prompt of one policy; ``k`` is the number of retrieved few-shot examples."""

    layout: ProfileLayout
    policy: str = "personalized"
    k: int = 3
    convention: str = "ttp"

    def __post_init__(self):
        if self.policy not in PROMPT_STYLES:
            raise ValueError(f"policy must be one of {PROMPT_STYLES}, got {self.policy!r}")

    def __call__(self, query: Query) -> str:
        src, out = self.layout.source_label, self.layout.output_label
        instruction, text = split_instruction(query.input)
        header = f"{instruction}.\n\n" if instruction else ""
        shots = "" if self.policy == "plain" else "".join(
            f"{src}: {it.source[:SOURCE_CHARS].strip()}\n{out}: {example_output(it, self.layout)}\n\n"
            for it in retrieve(query, self.k, self.convention)
        )
        return f"{header}{shots}{src}: {text[:QUERY_CHARS]}\n{out}:"
