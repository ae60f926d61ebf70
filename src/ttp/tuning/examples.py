"""The examples a policy is fine-tuned on: the task's own writing of its users, in the prompt
the policy samples with, and never a held-out user's gold.

* every user's profile items (which the task hands over at test time, held-out users' too),
  as the history queries of ``tasks/history.py`` make them;
* the training users' queries.

Honesty: a held-out user is one of the run's validation or test users.  Their query golds never
enter, nor does a profile item or a training query that is the record of a held-out query (the
same PEP listed by a co-author), so no held-out answer is learnt under another user's name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttp.tasks.data import Query, Task, UserSplit
from ttp.tasks.history import history_queries, is_history
from ttp.tasks.prompts import PromptBuilder, as_generated, record_text, same_record

TUNE_PROMPT = "plain"   # the shortest prompt: a third of the personalized prompt's tokens per example


@dataclass(frozen=True)
class Example:
    id: str        # the query's id (a history query's id names the user and profile item)
    user: str
    prompt: str
    target: str    # what the policy should write after the prompt, ending where sampling stops

    @property
    def kind(self) -> str:
        return "profile" if is_history(self.id) else "query"


def example(query: Query, builder: PromptBuilder) -> Example:
    """``query`` as an example: its prompt, then its gold as the policy would write it."""
    return Example(query.id, query.user, builder(query), as_generated(" ".join(query.gold.split())))


def training_examples(task: Task, split: UserSplit, items_per_user: int, seed: int = 0) -> list[Example]:
    """Up to ``items_per_user`` profile items of every user, and every training user's queries
    that are not a held-out query's record, in a seeded order."""
    held_out = [q for q in task.queries if q.user not in split.train]
    held = [record_text(q.input) for q in held_out]
    own = [q for q in task.queries if q.user in split.train
           and not any(same_record(record_text(q.input), h) for h in held)]
    builder = PromptBuilder(task.layout, TUNE_PROMPT)
    queries = history_queries(task, held_out, items_per_user, seed) + own
    examples = [example(q, builder) for q in queries]
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order]
