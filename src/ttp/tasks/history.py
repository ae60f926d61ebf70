"""History queries: each user's own profile items as queries with a known answer.

A LaMP-style task hands over, at test time, every user's profile: past inputs with the outputs
the user actually wrote.  Each item is a ready training example for a reward model, held-out
users' included: its source is the input (in the words of the task's own inputs), the user's
other items are its profile, and its output is the gold.  Pools sampled for them are scored
by ROUGE against that output.

Honesty: an item that is the record of a held-out query (that query's own PEP, listed in the
user's profile for their other queries, or a co-author's listing of it) is never a history
query, nor shown in one's profile, so no held-out gold enters training (``held_out``).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ttp.tasks.data import ProfileItem, Query, Task
from ttp.tasks.prompts import profile_for, record_text, same_record, split_instruction

HISTORY_PREFIX = "history:"


def is_history(query_id: str) -> bool:
    return query_id.startswith(HISTORY_PREFIX)


def history_queries(task: Task, held_out: Iterable[Query], items_per_user: int, seed: int = 0) -> list[Query]:
    """Up to ``items_per_user`` of each user's profile items (a seeded choice, in profile
    order) as queries; items that are a held-out query's record are left out everywhere."""
    if items_per_user < 1:
        raise ValueError(f"items_per_user must be at least 1, got {items_per_user}")
    held = [record_text(q.input) for q in held_out]

    def held_out_record(item: ProfileItem) -> bool:
        text = record_text(item.source)
        return any(same_record(text, h) for h in held)

    items: dict[str, dict[str, ProfileItem]] = {}
    instruction: dict[str, str] = {}
    for query in task.queries:
        mine = items.setdefault(query.user, {})
        mine.update({item.id: item for item in query.profile if item.id not in mine})
        instruction.setdefault(query.user, split_instruction(query.input)[0])
    rng = np.random.default_rng(seed)
    queries = []
    for user in sorted(items):
        usable = [item for item in items[user].values() if not held_out_record(item)]
        if len(usable) < 2:      # a history query needs a profile of its own, as every real query has
            continue
        for i in sorted(rng.permutation(len(usable))[:items_per_user]):
            item = usable[i]
            text = f"{instruction[user]}: {item.source}" if instruction[user] else item.source
            profile = profile_for(tuple(other for other in usable if other.id != item.id), text)
            queries.append(Query(f"{HISTORY_PREFIX}{user}:{item.id}", user, text, profile, gold=item.output))
    return queries
