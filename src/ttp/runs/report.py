"""The run report: Markdown tables and PNG figures in the run folder, and a JSON of everything.

Each figure answers one question:
* ``ceiling_<task>.png``: how much could perfect selection gain, and does it grow like log N?
* ``rewards_<task>_<policy>.png``: how much of that gain does each reward model capture?
* ``law_<task>_<policy>.png``: does the scaling law predict each reward model's curve?
* ``failures_<task>_<policy>.png``: which queries are hacked and which users collapsed?
* ``allocation_<task>_<policy>.png``: at equal compute, where should the samples go?
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ttp import __version__  # noqa: E402
from ttp.analysis.allocation import REFERENCE_BUDGET, AllocationStudy  # noqa: E402
from ttp.analysis.bon import Curve  # noqa: E402
from ttp.analysis.control import REFERENCES  # noqa: E402
from ttp.analysis.scaling import CEILING_FORMS, HELD_OUT_LAW, LAW_TOLERANCE  # noqa: E402
from ttp.files import write_bytes_atomic, write_json_atomic  # noqa: E402
from ttp.runs.config import RunConfig  # noqa: E402
from ttp.runs.folder import RunFolder  # noqa: E402
from ttp.runs.results import read_allocation, read_curves, read_diagnoses, read_reward_eval  # noqa: E402
from ttp.runs.tables import (  # noqa: E402
    allocation_table,
    ceiling_table,
    comparison_table,
    diagnosis_table,
    law_gaps_table,
    laws_table,
    rewards_table,
)
from ttp.tasks.utility import PRIMARY  # noqa: E402


def band(ax, curve: Curve, label: str, **style):
    line, = ax.plot(curve.n, curve.mean, label=label, **style)
    ax.fill_between(curve.n, curve.low, curve.high, color=line.get_color(), alpha=0.15, linewidth=0)


def save_figure(fig, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def ceiling_section(folder: RunFolder, tasks: list[str], policies) -> tuple[str, dict]:
    text, data = ["## 1. The oracle ceiling\n"], {}
    text.append(f"Utility: {PRIMARY} F1 against the user's gold output (ROUGE-1 is in the JSON). "
                "Oracle = pick the best candidate by its true utility; random = pick any. "
                "Brackets: 95% bootstrap interval over users.\n")
    for task in tasks:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        by_policy = {policy: read_curves(folder, task, policy) for policy in policies}
        for policy, curves in by_policy.items():
            data[f"{task}/{policy}"] = curves
            r = curves[PRIMARY]
            oracle = Curve.from_json(r["oracle"])
            band(ax, oracle, f"{policy}: oracle")
            band(ax, Curve.from_json(r["random"]), f"{policy}: random", linestyle=":")
            best = r["ceiling_fits"][0]
            ax.plot(oracle.n, best["a"] + best["b"] * CEILING_FORMS[best["form"]](oracle.n.astype(int)),
                    color="black", linewidth=0.8, linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (candidates drawn)")
        ax.set_ylabel(f"expected {PRIMARY} of the pick")
        ax.set_title(f"{task}: perfect selection vs random (dashed: best ceiling fit)")
        ax.legend(fontsize=8)
        name = save_figure(fig, folder.figures / f"ceiling_{task}.png")
        text.append(f"### {task}\n\n![ceiling](figures/{name})\n")
        text.append(ceiling_table(task, by_policy).to_markdown())
    return "\n".join(text), data


def rewards_section(folder: RunFolder, cells) -> tuple[str, dict]:
    text, data = ["## 2. Reward models on held-out users\n"], {}
    text.append("Trained on training users' pools, early-stopped on validation users, judged on test "
                "users. *Gain share* = (BoN(N) − BoN(1)) / (oracle(N) − oracle(1)).\n")
    for task, policy in cells:
        ev = read_reward_eval(folder, task, policy)
        data[f"{task}/{policy}"] = ev
        fig, ax = plt.subplots(figsize=(7, 4.5))
        band(ax, Curve.from_json(ev["oracle"]), "oracle", color="black")
        for name, sel in ev["selectors"].items():
            band(ax, Curve.from_json(sel["curve"]), name, linestyle=":" if name == "random" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N")
        ax.set_ylabel(f"expected {PRIMARY} of the pick")
        ax.set_title(f"{task} / {policy}: Best-of-N by reward model ({ev['queries']} test queries)")
        ax.legend(fontsize=7, ncol=2)
        name = save_figure(fig, folder.figures / f"rewards_{task}_{policy}.png")
        text.append(f"### {task} / {policy}\n")
        text.append(f"![rewards](figures/{name})\n")
        text.append(rewards_table(task, policy, ev).to_markdown())
    return "\n".join(text), data


def diagnosis_section(folder: RunFolder, cells, tau: float, evaluations: dict) -> tuple[str, dict]:
    """``evaluations``: each cell's ``reward_eval.json``, as ``rewards_section`` read it."""
    text, data = ["## 3. Scaling-law diagnosis\n"], {}
    text.append(
        "Four quantities: μ̄ mean candidate utility, σ̄ mean within-query spread, c collapse rate "
        f"(users whose score spread is at most τ = {tau} of the median "
        "user's), ρ̄ mean score–utility correlation over non-collapsed queries; h is the share of "
        "those with ρ_q < 0; among pools whose utilities vary, *by chance* is the share of ρ_q < 0 "
        "that sampling noise alone would give at this pool size if every such pool had their mean "
        "correlation. corr(ρ_q, σ_q) far from 0 breaks the four-quantity factorization. The copula laws "
        "keep each pool's own utilities and assume only a Gaussian copula between score and utility "
        "(docs/method.md), whose upper half the RM may order less sharply (copula λ̂ < 1) or more "
        "(λ̂ > 1) than the rest: the top compression, one per RM, measured from the ranks of each pool's "
        "better-scored half, on these same pools, as ρ_q is; *val. λ̂* and the law beside it measure λ on the "
        "validation users' pools instead, so that it is carried over to other users, not fitted to the pools "
        "it is judged on. The per-query law averages its curve over "
        "the posterior of each pool's copula correlation given the measured one, the pooled one gives "
        "every pool one r̄. The factorization gaps measure how far the pooled laws stand from their "
        "per-query forms, the non-Gaussian gap how far the Gaussian per-query "
        "law stands from the copula one. *Flat pools*: "
        "share of queries whose candidates all have the same utility (ρ_q := 0). Law errors: "
        "maximum over N of |law − observed| as a share of the oracle gain at N = M (target: copula "
        f"per-query law ≤ {LAW_TOLERANCE:.0%}).\n")
    for task, policy in cells:
        diagnoses = read_diagnoses(folder, task, policy)
        data[f"{task}/{policy}"] = {k: d.to_json() for k, d in diagnoses.items()}
        names = [n for n in diagnoses if n != "random"]
        text.append(f"### {task} / {policy}\n")
        text.append(diagnosis_table(task, policy, diagnoses).to_markdown())
        text.append(laws_table(task, policy, diagnoses).to_markdown())
        text.append(law_gaps_table(task, policy, diagnoses).to_markdown())
        text.append("Every reward-model family side by side (rewards/families.py): h is shown against "
                    "the share expected by chance, the laws' error is the per-query one.\n")
        text.append(comparison_table(task, policy, evaluations[f"{task}/{policy}"], diagnoses).to_markdown())
        text.append(f"![law](figures/{_law_figure(folder, task, policy, diagnoses, names)})\n")
        text.append(f"![failures](figures/{_failure_figure(folder, task, policy, diagnoses, names)})\n")
        for name in names:
            d = diagnoses[name]
            if d.collapsed_users or d.hacked_queries:
                collapsed = ", ".join(str(c["user"]) for c in d.collapsed_users[:8]) or "none"
                hacked = ", ".join(f"{h['query']} (ρ={h['rho']:.2f})" for h in d.hacked_queries[:8]) or "none"
                text.append(f"- **{name}**: collapsed users: {collapsed}; most hacked queries: {hacked}\n")
    return "\n".join(text), data


def _law_figure(folder: RunFolder, task: str, policy: str, diagnoses: dict, names: list[str]) -> str:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        d = diagnoses[name]
        n = np.arange(1, len(d.observed) + 1)
        ax.plot(n, d.oracle, color="black", linewidth=1, label="oracle")
        ax.plot(n, d.observed, color="tab:blue", linewidth=2, label="observed")
        if d.observed_se is not None:
            ax.fill_between(n, d.observed - 2 * d.observed_se, d.observed + 2 * d.observed_se, color="tab:blue",
                            alpha=0.15, linewidth=0, label="observed ± 2 SE")
        ax.plot(n, d.laws["per_query"], color="tab:orange", linestyle="--", label="per-query law")
        ax.plot(n, d.laws["four_quantity"], color="tab:green", linestyle=":", label="four-quantity law")
        ax.plot(n, d.laws["per_query_oracle_anchored"], color="tab:red", linestyle="-.",
                label="oracle-anchored law")
        ax.plot(n, d.laws["copula_per_query"], color="tab:purple", linestyle=(0, (5, 1)), label="copula law")
        held_out = ""
        if HELD_OUT_LAW in d.laws:
            ax.plot(n, d.laws[HELD_OUT_LAW], color="tab:purple", linestyle=":", alpha=0.6,
                    label="copula law, λ̂ of validation users")
            held_out = f", validation users' {d.held_out_compression_text}"
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name}\nρ̄={d.rho_bar:.2f}, c={d.collapse_rate:.2f}, h={d.hacked_share:.2f}\n"
                     f"copula λ̂={d.top_compression_text}{held_out}", fontsize=9)
        ax.set_xlabel("N")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].set_ylabel(f"{PRIMARY} of the pick")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{task} / {policy}: does the law predict each reward model's Best-of-N curve?")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))   # keep the panel titles clear of it
    return save_figure(fig, folder.figures / f"law_{task}_{policy}.png")


def _failure_figure(folder: RunFolder, task: str, policy: str, diagnoses: dict, names: list[str]) -> str:
    """Two panels, one row per selector: within-query correlations (hacking) and users'
    score spreads relative to the median user (collapse), each with its threshold."""
    rng = np.random.default_rng(0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(names) + 1.8), sharey=True)
    for row, name in enumerate(names):
        d = diagnoses[name]
        rho = np.asarray(d.per_query["rho"])[~np.asarray(d.per_query["flat"], dtype=bool)]
        left.scatter(rho, row + rng.uniform(-0.25, 0.25, len(rho)), s=8, alpha=0.5,
                     c=np.where(rho < 0, "tab:red", "tab:blue"))
        left.text(1.02, row, f"{np.mean(rho < 0):.0%} < 0 (chance {d.hacked_share_expected_by_chance:.0%})",
                  va="center", fontsize=7, transform=left.get_yaxis_transform())
        spread = np.asarray(list(d.user_score_spread.values()))
        ratio = spread / max(np.median(spread), 1e-12)
        right.scatter(np.maximum(ratio, 1e-3), row + rng.uniform(-0.25, 0.25, len(ratio)), s=12, alpha=0.6,
                      c=np.where(ratio <= d.collapse_tau, "tab:red", "tab:gray"))
        right.text(1.02, row, f"{len(d.collapsed_users)} of {len(spread)} collapsed", va="center",
                   fontsize=7, transform=right.get_yaxis_transform())
    left.axvline(0, color="red", linewidth=1)
    left.set_xlim(-1, 1)
    left.set_yticks(range(len(names)), names, fontsize=8)
    left.set_xlabel("within-query corr(score, utility); red = hacked (ρ_q < 0)")
    left.set_title("query-level reward hacking (pools with a utility spread)", fontsize=9)
    tau = diagnoses[names[0]].collapse_tau
    right.axvline(tau, color="red", linewidth=1)
    right.set_xscale("log")
    right.set_xlabel(f"user's score spread / median user's; red = collapsed (≤ τ = {tau:g})")
    right.set_title("user-level collapse", fontsize=9)
    fig.suptitle(f"{task} / {policy}: where each reward model fails", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.5)
    return save_figure(fig, folder.figures / f"failures_{task}_{policy}.png")


def _samples_needed_panel(ax, study: AllocationStudy) -> None:
    """Each policy's samples to reach uniform N = 8 (the dotted line on the left), with its band
    over users, paired with the uniform reference: the comparison the bands on the left, each of
    one curve alone, cannot show."""
    right = max(max(c.samples_per_query) for c in study.curves.values())
    for row, name in enumerate(study.curves):
        need = study.samples_to_reach_reference(name)
        if need is None:
            ax.annotate("not reached", (right, row), ha="right", va="center", fontsize=8)
            continue
        low, high = study.reference_bands.get(name, (need, need))
        ax.plot([low, min(high, right)], [row, row], color=f"C{row}", linewidth=2)
        if high > right:
            ax.plot(right, row, marker=">", color=f"C{row}")
        ax.plot(need, row, marker="o", color=f"C{row}")
    ax.axvline(REFERENCE_BUDGET, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(study.curves)), list(study.curves), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, right * 1.02)
    ax.set_xlabel(f"samples per query to reach uniform N={REFERENCE_BUDGET}")
    ax.set_title("95% band over users, paired with uniform", fontsize=10)


def allocation_section(folder: RunFolder, cells) -> tuple[str, dict]:
    text, data = ["## 4. The law as a controller of test-time compute\n"], {}
    text.append("Every policy spends the same average number of samples per query on the test users' pools "
                "(drawn without replacement in seeded random orders, 20 repeats). *uniform*: the same N "
                "everywhere; *skip_collapsed*: users whose pilot scores are flat get nothing beyond "
                "the pilot, the rest share the budget evenly; *greedy*: each next sample to the query "
                "with the largest predicted gain κ·ŝ_q·(e_{n+1} − e_n); *early_stop*: sample while that "
                "gain exceeds a threshold set to meet the budget; *expected_improvement*: sample while κ times "
                "the next score's expected rise above the best so far exceeds a threshold set to meet the "
                "budget (the online rule; the spread of the drawn scores is shrunk toward the typical one with "
                "the strength chosen on validation users). Two references know each query's full pool: "
                "*known_calibration* is expected improvement told each query's own κ_q and score spread, "
                "*oracle_bound* the best "
                "allocation given every query's true Best-of-N curve.\n")
    for task, policy in cells:
        study = read_allocation(folder, task, policy)
        data[f"{task}/{policy}"] = study.to_json()
        fig, (ax, need_ax) = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        for name, curve in study.curves.items():
            if name in REFERENCES:   # they know the full pools: a line to aim at, not a result with a band
                ax.plot(curve.samples_per_query, curve.mean, linestyle="--", marker="o", markersize=3, label=name)
            else:
                band(ax, Curve(np.asarray(curve.samples_per_query), np.asarray(curve.mean), np.asarray(curve.low),
                                np.asarray(curve.high)), name, marker="o", markersize=3)
        if study.uniform_reference is not None:
            ax.axhline(study.uniform_reference, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples spent per query (average)")
        ax.set_ylabel(f"{PRIMARY} of the pick")
        ax.set_title(f"{task} / {policy}: where should samples go? ({study.selector})", fontsize=10)
        ax.legend(fontsize=8)
        _samples_needed_panel(need_ax, study)
        fig.tight_layout()
        name = save_figure(fig, folder.figures / f"allocation_{task}_{policy}.png")
        text.append(f"### {task} / {policy}\n\n![allocation](figures/{name})\n")
        text.append(allocation_table(task, policy, study).to_markdown())
        text.append(f"\n`ttp generate` and `ttp serve` draw with the **{study.online_rule}** rule here (expected "
                    f"improvement where it reaches uniform N = {REFERENCE_BUDGET} with fewer samples on the "
                    f"validation users, else uniform N). Expected improvement shrinks a query's score spread "
                    f"with {study.prior_strength:g} pseudo-draws, the strength that needs the fewest samples on "
                    f"the validation users.\n")
    return "\n".join(text), data


CONVENTION_NOTES = {
    "ttp": "ROUGE with Porter stemming; BM25 over the whole input, stopwords removed",
    "lamp": "LaMP's: ROUGE without stemming, as Hugging Face evaluate computes it; BM25 over whitespace "
            "tokens of the text after the instruction",
}


def write_report(folder: RunFolder, config: RunConfig, tasks: list[str]) -> str:
    """Write ``report.md``, the figures and ``report.json``; return the report's path."""
    cells = [(task, policy) for task in tasks for policy in config.policies]
    parts = [f"# TTP report: {folder.root}\n", f"Written by ttp {__version__}.\n",
             f"Tasks: {', '.join(tasks)}. Policies: {', '.join(config.policies)}. "
             f"Pool size M = {config.sampling.n}, temperature {config.sampling.temperature}, top-p "
             f"{config.sampling.top_p}, seed {config.seed}, backend {config.engine.backend}. User split "
             f"(train/validation/test) {config.split}. Convention **{config.convention}** "
             f"({CONVENTION_NOTES[config.convention]}).\n"]
    ceiling_text, ceiling = ceiling_section(folder, tasks, config.policies)
    rewards_text, rewards = rewards_section(folder, cells)
    diagnosis_text, diagnosis = diagnosis_section(folder, cells, config.collapse_tau, rewards)
    allocation_text, allocation = allocation_section(folder, cells)
    parts += [ceiling_text, rewards_text, diagnosis_text, allocation_text]
    write_json_atomic(folder.report_json, {"ttp_version": __version__, "config": config.to_json(), "ceiling": ceiling,
                                           "rewards": rewards, "diagnosis": diagnosis, "allocation": allocation})
    write_bytes_atomic(folder.report, "\n".join(parts).encode("utf-8"))
    return str(folder.report)
