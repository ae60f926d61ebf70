"""History queries (``ttp.tasks.history``): each user's profile items as queries with the
user's own output as gold, and the honesty guard: no held-out query's record, the user's own or
a co-author's copy of it, becomes a history query or shows in one's profile."""
from dataclasses import replace

import pytest

from ttp.tasks.data import ProfileItem, Task, split_users
from ttp.tasks.history import history_queries, is_history
from ttp.tasks.prompts import record_text, same_record, split_instruction


def _held_out(task: Task):
    split = split_users(task.users, (0.5, 0.25, 0.25), seed=0)
    return [q for q in task.queries if q.user in (*split.validation, *split.test)]


def test_history_queries_are_profile_items_with_the_users_own_output_as_gold(pep_task):
    held_out = _held_out(pep_task)
    history = history_queries(pep_task, held_out, items_per_user=3, seed=0)
    items = {(q.user, item.id): item for q in pep_task.queries for item in q.profile}
    assert history and all(is_history(h.id) for h in history)
    per_user = {}
    for h in history:
        user, item_id = h.id.removeprefix("history:").rsplit(":", 1)
        item = items[(user, item_id)]
        assert h.user == user and h.gold == item.output
        assert split_instruction(h.input) == ("Generate a title for the following abstract of a paper",
                                               item.source.strip())
        assert item_id not in {p.id for p in h.profile} and len(h.profile) >= 1
        per_user[user] = per_user.get(user, 0) + 1
    assert max(per_user.values()) == 3
    assert history == history_queries(pep_task, held_out, items_per_user=3, seed=0)      # seeded


def test_no_held_out_record_enters_a_history_query_even_as_a_co_authors_copy(pep_task):
    held_out = _held_out(pep_task)
    target = held_out[0]
    # a co-author (a training user) lists the held-out PEP in their profile, its abstract cut short
    author = next(u for u in pep_task.users if u not in {q.user for q in held_out})
    copy = ProfileItem("pep-copy", target.gold, split_instruction(target.input)[1][:SAME_CHARS])
    queries = tuple(replace(q, profile=(*q.profile, copy)) if q.user == author else q for q in pep_task.queries)
    task = replace(pep_task, queries=queries)
    history = history_queries(task, held_out, items_per_user=50, seed=0)
    held = [record_text(q.input) for q in held_out]
    golds = {q.gold for q in held_out}
    for h in history:
        assert not any(same_record(record_text(h.input), r) for r in held), h.id
        assert h.gold not in golds
        for item in h.profile:
            assert not any(same_record(record_text(item.source), r) for r in held), (h.id, item.id)
    assert not any(h.id.endswith(":pep-copy") for h in history)
    # every other item is a history query (of a user with two such items or more, so that each
    # has a profile): the guard leaves out only held-out records
    usable = {}
    for q in task.queries:
        for i in q.profile:
            if not any(same_record(record_text(i.source), r) for r in held):
                usable.setdefault(q.user, set()).add(i.id)
    expected = {(user, i) for user, ids in usable.items() if len(ids) >= 2 for i in ids}
    assert {tuple(h.id.removeprefix("history:").rsplit(":", 1)) for h in history} == expected


SAME_CHARS = 300


def test_items_per_user_must_be_positive(pep_task):
    with pytest.raises(ValueError, match="at least 1"):
        history_queries(pep_task, [], items_per_user=0)


@pytest.mark.slow
def test_ttp_history_trains_on_history_pools_and_resumes_without_drawing_again(small_run):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from ttp.cli import app
    from ttp.runs.pipeline import Pipeline

    task_name = "PEP-titles"
    result = CliRunner().invoke(app, ["history", str(small_run), "--items-per-user", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    cell = small_run / task_name / "personalized"
    pools = (cell / "history_pools.jsonl").read_bytes()
    history = pd.read_parquet(cell / "history_features.parquet")
    pipeline = Pipeline.resume(small_run, show_progress=False)
    task = pipeline.tasks[0]
    split = pipeline.splits[task_name]
    held_out = [q for q in task.queries if q.user in (*split.validation, *split.test)]
    assert history.query_id.map(is_history).all() and history.user.nunique() >= 4
    assert not set(history.query_id) & {q.id for q in task.queries}
    golds = {q.id: q.gold for q in pipeline.history_queries(task)}
    assert not set(golds.values()) & {q.gold for q in held_out}
    # the history family's training set: the training users' pools and the history pools, nothing held out
    from ttp.rewards.families import FAMILIES

    table = pipeline.features(task, "personalized")
    train = split.rows(table["user"], "train")
    _, _, groups = FAMILIES["history"].training_set(table[train], table.rougeL[train].to_numpy(),
                                                    table.query_id[train].to_numpy(),
                                                    pipeline.reward_inputs(task, "personalized"))
    assert not set(groups) & {q.id for q in held_out} and set(history.query_id) <= set(groups)
    evaluation = json.loads((cell / "reward_eval.json").read_text())["selectors"]
    assert {"history.pointwise", "history.bradley_terry", "history.probabilistic/mean",
            "history_user.probabilistic/mean"} <= set(evaluation)
    again = CliRunner().invoke(app, ["history", str(small_run), "--items-per-user", "1"])
    assert again.exit_code == 0 and (cell / "history_pools.jsonl").read_bytes() == pools     # nothing drawn again

    # the learning curve: k = the run's items per user refits the stage's own history models, and
    # k = 0 (no history) the features family's, so both ends must give the stage's figures
    curve = CliRunner().invoke(app, ["learning-curve", str(small_run), "--items", "0", "--items", "1"])
    assert curve.exit_code == 0, curve.output + repr(curve.exception)
    points = json.loads((cell / "learning_curve.json").read_text())["points"]
    assert [p["items_per_user"] for p in points] == [0, 1]
    assert points[0]["history_pools"] == 0 and points[1]["history_pools"] == history.query_id.nunique()
    m = str(points[0]["pool_size"])
    for name in ("history.pointwise", "history.bradley_terry", "history_user.probabilistic/mean"):
        assert points[1]["selectors"][name]["oracle_gain_share"][m] == pytest.approx(
            evaluation[name]["oracle_gain_share"][m])
    for head in ("pointwise", "bradley_terry"):
        assert points[0]["selectors"][f"history.{head}"]["oracle_gain_share"][m] == pytest.approx(
            evaluation[head]["oracle_gain_share"][m])
        # no held-out user has pools of their own at k = 0: the per-user model is the global one
        assert points[0]["selectors"][f"history_user.{head}"]["oracle_gain_share"][m] == pytest.approx(
            points[0]["selectors"][f"history.{head}"]["oracle_gain_share"][m])
    # the allocation study of k = 0's probabilistic mean is the allocate stage's (its controller)
    allocation = json.loads((cell / "allocation.json").read_text())
    at_zero = points[0]["allocation"]["history.probabilistic/mean"]
    assert at_zero["curves"] == allocation["curves"] and at_zero["kappa"] == pytest.approx(allocation["kappa"])
    assert set(points[1]["allocation"]) == {"history.probabilistic/mean", "history_user.probabilistic/mean"}
    from ttp.runs.tables import learning_curve_table

    table = learning_curve_table(task_name, "personalized", json.loads((cell / "learning_curve.json").read_text()))
    assert table.columns == ["selector", "k = 0", "k = 1"]
    assert [r[0] for r in table.rows][-2:] == [f"{s}: expected improvement's samples to reach uniform N=8"
                                               for s in ("history.probabilistic/mean",
                                                         "history_user.probabilistic/mean")]
    assert (small_run / "figures" / "learning_curve.png").stat().st_size > 0
    fitted = (cell / "learning_curve.json").stat().st_mtime_ns
    resumed = CliRunner().invoke(app, ["learning-curve", str(small_run), "--items", "1"])
    assert resumed.exit_code == 0 and "fitting" not in resumed.output
    assert (cell / "learning_curve.json").stat().st_mtime_ns == fitted
    beyond = CliRunner().invoke(app, ["learning-curve", str(small_run), "--items", "2"])
    assert beyond.exit_code != 0 and "0..1" in beyond.output
    other = CliRunner().invoke(app, ["history", str(small_run), "--items-per-user", "2"])
    assert other.exit_code != 0 and "copy the run folder" in str(other.exception)


def test_the_learning_curves_items_are_a_seeded_nested_choice_per_user():
    import pandas as pd

    from ttp.runs.learning_curve import nested_items

    history = pd.DataFrame([{"user": f"u{u}", "query_id": f"history:u{u}:{i}", "candidate": c}
                            for u in range(5) for i in range(4 if u else 2) for c in range(3)])
    kept = [set(history.query_id[nested_items(history, k, seed=0)]) for k in range(5)]
    assert kept[0] == set() and kept[4] == set(history.query_id)
    for k in range(1, 5):
        assert kept[k - 1] <= kept[k]
        per_user = history[history.query_id.isin(kept[k])].groupby("user").query_id.nunique()
        assert (per_user == per_user.index.map(lambda u: min(k, 2 if u == "u0" else 4))).all()
    mask = nested_items(history, 2, seed=0)
    assert (mask == nested_items(history, 2, seed=0)).all() and (mask != nested_items(history, 2, seed=1)).any()
    # a pool is kept or dropped whole
    assert history[mask].groupby("query_id").size().eq(3).all()


def test_only_the_per_user_affine_recovers_a_user_whose_taste_runs_against_everyone_elses():
    import numpy as np
    import pandas as pd

    from ttp.analysis.stats import within_pool_correlation
    from ttp.rewards.models import RewardModel
    from ttp.rewards.per_user import PerUserRewardModel

    rng = np.random.default_rng(0)
    rows = []
    for user in range(8):
        contrarian = user == 0                 # this user likes what the others dislike
        for pool in range(4):
            x = rng.normal(size=(8, 3))
            taste = x[:, 0] + 0.3 * x[:, 1]
            utility = (-taste if contrarian else taste) + 0.1 * rng.normal(size=8)
            rows += [{"a": a, "b": b, "c": c, "user": f"u{user}", "pool": f"u{user}-{pool}", "y": y}
                     for (a, b, c), y in zip(x, utility)]
    table = pd.DataFrame(rows)
    X, y, groups = table[["a", "b", "c", "user"]], table.y.to_numpy(), table.pool.to_numpy()
    per_user = PerUserRewardModel(kind="pointwise", seed=0, max_epochs=100).fit(X, y, groups)
    plain = RewardModel(kind="pointwise", seed=0, max_epochs=100).fit(X.drop(columns="user"), y, groups)
    test = pd.DataFrame([{"a": a, "b": b, "c": c, "user": u, "pool": f"t-{u}-{p}"}
                         for u in ("u0", "u1") for p in range(5) for a, b, c in rng.normal(size=(8, 3))])
    truth = np.where(test.user == "u0", -1, 1) * (test.a + 0.3 * test.b)

    def rho(scores, user):
        mine = (test.user == user).to_numpy()
        return within_pool_correlation(scores[mine], truth[mine].to_numpy(), test.pool[mine].to_numpy()).mean()

    global_scores = plain.predict(test[["a", "b", "c"]])
    adapted = per_user.predict(test[["a", "b", "c", "user"]])
    assert rho(global_scores, "u0") < -0.8 and rho(adapted, "u0") > 0.8       # the contrarian is recovered
    assert rho(global_scores, "u1") > 0.8 and rho(adapted, "u1") > 0.8        # and the others keep their ranking
    unseen = per_user.predict(test[["a", "b", "c"]].assign(user="nobody"))
    np.testing.assert_allclose(unseen, per_user.global_.predict(test[["a", "b", "c"]]))   # no pools: the global
    assert per_user.per_user_["u0"][0] < 0 < per_user.per_user_["u1"][0]


def test_a_per_user_model_saves_as_data_and_loads_back(tmp_path):
    import numpy as np
    import pandas as pd

    from ttp.rewards.per_user import PerUserRewardModel

    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=48), "user": ["u1"] * 24 + ["u2"] * 24})
    y, groups = X.a.to_numpy() + rng.normal(size=48) * 0.1, np.repeat(np.arange(6), 8)
    model = PerUserRewardModel(kind="probabilistic", seed=0).fit(X, y, groups)
    model.save(tmp_path / "m")
    loaded = PerUserRewardModel.load(tmp_path / "m")
    for a, b in zip(model.predict(X, return_std=True), loaded.predict(X, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["global", "per_user.json"]
    with pytest.raises(ValueError, match="'user' column"):
        model.predict(X.drop(columns="user"))
