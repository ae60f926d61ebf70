"""How much of the oracle gain the history-trained reward models capture as each user's history
grows: ``learning_curve(pipeline, items)`` refits the history families on the first ``k``
history items of every user, for each ``k`` in ``items``, and judges every fit on the run's test
pools as the rewards stage judges its models, with the allocate stage's study of each family's
counterpart of the run's controller selector (how many samples expected improvement needs to
match uniform N = 8).

``k = 0`` is the training users' pools alone, which is what the features family learns from;
``k`` = the run's own items per user is the history family the rewards stage trained.  The
choice of items is seeded and nested: the items of ``k`` are among those of ``k + 1``, so the
curve moves only with the data.  Written to ``learning_curve.json`` in each cell, one entry per
``k``, so that a rerun resumes at the first ``k`` not yet fitted.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ttp.analysis.pools import Pools
from ttp.files import read_json, write_json_atomic
from ttp.rewards.families import FAMILIES, HEADS, head_of
from ttp.rewards.selection import Selector
from ttp.runs.evaluation import evaluate_selectors, selector_scores
from ttp.tasks.utility import PRIMARY

CURVE_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.trains_on_history)


def nested_items(history: pd.DataFrame, k: int, seed: int = 0) -> np.ndarray:
    """Rows of ``history`` (candidates of history pools) whose pool is among the first ``k`` of
    its user's pools in a seeded order, the same order for every ``k``."""
    pools = history[["user", "query_id"]].drop_duplicates().sort_values(["user", "query_id"])
    order = np.random.default_rng(seed).permutation(len(pools))
    rank = pd.Series(order, index=pools.query_id.to_numpy()).groupby(pools.user.to_numpy()).rank(method="first")
    kept = set(rank.index[rank.to_numpy() <= k])
    return history.query_id.isin(kept).to_numpy()


def learning_curve(pipeline, items: Sequence[int], heads: Sequence[str] = HEADS,
                   on_point: Callable[[str, str, int], None] | None = None) -> dict[tuple[str, str], dict]:
    """``{(task, policy): {"points": [...]}}``, each point one ``k`` with the history rows and
    pools it used and, for every history family x head, its test-pool evaluation (the rewards
    stage's ``reward_eval`` entries).  ``on_point(task, policy, k)`` says which fit starts."""
    config = pipeline.config
    if not config.history_items:
        raise ValueError(f"{pipeline.folder.root} has no history pools: run `ttp history` on it first")
    outside = [k for k in items if not 0 <= k <= config.history_items]
    if outside:
        raise ValueError(f"items per user must lie in 0..{config.history_items} (the run's history holds "
                         f"{config.history_items} per user), got {outside}")
    results = {}
    for task, policy in pipeline.cells():
        path = pipeline.folder.learning_curve(task.name, policy)
        saved = read_json(path) if path.exists() else {}
        settings = {"heads": list(heads), "history_items": config.history_items, "seed": config.seed}
        # points fitted with other settings (or a file that is not this module's) are fitted again
        points = saved.get("points", []) if isinstance(saved, dict) and saved.get("settings") == settings else []
        done = {p["items_per_user"] for p in points}
        table = pipeline.features(task, policy)
        split = pipeline.splits[task.name]
        rows = {part: split.rows(table["user"], part) for part in ("train", "validation", "test")}
        y, groups = table[PRIMARY].to_numpy(), table["query_id"].to_numpy()
        inputs = pipeline.reward_inputs(task, policy)
        family_inputs = {name: FAMILIES[name].batch_inputs(table, inputs)[0] for name in CURVE_FAMILIES}
        # each family's counterpart of the run's controller selector (probabilistic/mean by default)
        controller = Selector.parse(config.controller_selector)
        allocated = [Selector(FAMILIES[name].model_name(head_of(controller.model)), controller.rule)
                     for name in CURVE_FAMILIES]
        for k in sorted(set(items) - done):
            if on_point:
                on_point(task.name, policy, k)
            history = inputs.history[nested_items(inputs.history, k, config.seed)]
            models = {FAMILIES[name].model_name(head): (FAMILIES[name].fit(
                          head, config.seed, X, y, groups, rows["train"], rows["validation"],
                          replace(inputs, history=history)), X)
                      for name, X in family_inputs.items() for head in heads}
            val_pools, test_pools = (
                Pools.from_frame(selector_scores({name: (model, X[rows[part]]) for name, (model, X) in models.items()},
                                                 table[rows[part]], kappa=config.lcb_kappa))
                for part in ("validation", "test"))
            evaluation = evaluate_selectors(test_pools, config.bootstrap, config.seed)
            allocation = {str(s): pipeline.allocation_study(s, val_pools, test_pools).to_json()
                          for s in allocated if s.model in models}
            points.append({"items_per_user": k, "history_pools": int(history.query_id.nunique()),
                           "history_candidates": int(len(history)), "training_candidates": int(rows["train"].sum()),
                           "pool_size": evaluation["pool_size"], "selectors": evaluation["selectors"],
                           "allocation": allocation})
            points.sort(key=lambda p: p["items_per_user"])
            write_json_atomic(path, {"settings": settings, "points": points})
        results[(task.name, policy)] = {"settings": settings, "points": points}
    return results


def learning_curve_figure(results: dict[tuple[str, str], dict], path) -> str:
    """The share of the oracle gain at the pool size against history items per user, one panel
    per cell and one line per selector, with its 95% interval over users; the file's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ttp.runs.report import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(4.0 * len(results), 3.2), squeeze=False)
    for ax, ((task, policy), result) in zip(axes[0], results.items()):
        points = result["points"]
        m = str(points[0]["pool_size"])
        for selector in points[0]["selectors"]:
            shares = np.array([p["selectors"][selector]["oracle_gain_share"][m] for p in points])
            k = [p["items_per_user"] for p in points]
            ax.errorbar(k, shares[:, 0], yerr=[shares[:, 0] - shares[:, 1], shares[:, 2] - shares[:, 0]],
                        label=selector, capsize=2, marker="o", markersize=3)
        ax.set_title(f"{task} / {policy}", fontsize=8)
        ax.set_xlabel("history items per user")
        ax.set_ylabel(f"share of the oracle gain at N = {m}")
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    return save_figure(fig, path)
