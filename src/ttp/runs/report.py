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

from ttp.runs.folder import read_json, write_bytes_atomic, write_json_atomic  # noqa: E402
from ttp.analysis.scaling import CEILING_FORMS  # noqa: E402
from ttp.tasks.utility import PRIMARY  # noqa: E402

LAWS = ("per_query", "four_quantity", "per_query_oracle_anchored", "four_quantity_oracle_anchored")


def _ci(values, i: int) -> str:
    return f"{values['mean'][i]:.3f} [{values['low'][i]:.3f}, {values['high'][i]:.3f}]"


def _band(ax, curve: dict, label: str, **style):
    n = np.asarray(curve["n"])
    line, = ax.plot(n, curve["mean"], label=label, **style)
    ax.fill_between(n, curve["low"], curve["high"], color=line.get_color(), alpha=0.15, linewidth=0)


def _save(fig, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def at_points(m: int) -> list[int]:
    """The N at which tables report a curve of a pool of size m: 1, 4, 16 and M itself."""
    return sorted({n for n in (1, 4, 16) if n <= m} | {m})


def ceiling_section(pipeline) -> tuple[str, dict]:
    folder, text, data = pipeline.folder, ["## 1. The oracle ceiling\n"], {}
    text.append(f"Utility: {PRIMARY} F1 against the user's gold output (ROUGE-1 is in the JSON). "
                "Oracle = pick the best candidate by its true utility; random = pick any. "
                "Brackets: 95% bootstrap interval over users.\n")
    for task in pipeline.tasks:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        rows = []
        for policy in pipeline.config.policies:
            curves = read_json(folder.curves(task.name, policy))
            data[f"{task.name}/{policy}"] = curves
            r = curves[PRIMARY]
            m = len(r["oracle"]["n"])
            _band(ax, r["oracle"], f"{policy}: oracle")
            _band(ax, r["random"], f"{policy}: random", linestyle=":")
            best = r["ceiling_fits"][0]
            n = np.arange(1, m + 1)
            basis = CEILING_FORMS[best["form"]](n)
            ax.plot(n, best["a"] + best["b"] * basis, color="black", linewidth=0.8, linestyle="--")
            fits = "; ".join(f"{f['form']}: b={f['b']:.4f}, rmse={f['rmse']:.4f}" for f in r["ceiling_fits"])
            rows.append([policy, str(r["queries"]), str(r["users"]),
                         *[_ci(r["oracle"], k - 1) for k in at_points(m)],
                         *[_ci(r["random"], k - 1) for k in (1, m)], f"**{best['form']}** ({fits})"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (candidates drawn)")
        ax.set_ylabel(f"expected {PRIMARY} of the pick")
        ax.set_title(f"{task.name}: perfect selection vs random (dashed: best ceiling fit)")
        ax.legend(fontsize=8)
        name = _save(fig, folder.figures / f"ceiling_{task.name}.png")
        text.append(f"### {task.name}\n\n![ceiling](figures/{name})\n")
        text.append(_table(["policy", "queries", "users", *[f"oracle N={k}" for k in at_points(m)],
                            "random N=1", f"random N={m}", "ceiling fits (best first)"], rows))
    return "\n".join(text), data


def rewards_section(pipeline) -> tuple[str, dict]:
    folder, text, data = pipeline.folder, ["## 2. Reward models on held-out users\n"], {}
    text.append("Trained on training users' pools, early-stopped on validation users, judged on test "
                "users. *Gain share* = (BoN(N) − BoN(1)) / (oracle(N) − oracle(1)).\n")
    for task, policy in pipeline.cells():
        ev = read_json(folder.reward_eval(task.name, policy))
        data[f"{task.name}/{policy}"] = ev
        m = ev["pool_size"]
        points = at_points(m)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _band(ax, ev["oracle"], "oracle", color="black")
        rows = [["oracle", *[_ci(ev["oracle"], k - 1) for k in points], "1", "1"]]
        for name, sel in ev["selectors"].items():
            _band(ax, sel["curve"], name, linestyle=":" if name == "random" else "-")
            share = sel["oracle_gain_share"].get(str(m), [math.nan] * 3)
            rows.append([name, *[_ci(sel["curve"], k - 1) for k in points],
                         f"{share[0]:.2f} [{share[1]:.2f}, {share[2]:.2f}]", f"{sel['mean_spearman']:.3f}"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N")
        ax.set_ylabel(f"expected {PRIMARY} of the pick")
        ax.set_title(f"{task.name} / {policy}: Best-of-N by reward model ({ev['queries']} test queries)")
        ax.legend(fontsize=7, ncol=2)
        name = _save(fig, folder.figures / f"rewards_{task.name}_{policy}.png")
        text.append(f"### {task.name} / {policy}\n")
        text.append(f"![rewards](figures/{name})\n")
        text.append(_table(["selector", *[f"N={k}" for k in points], f"gain share N={m}", "Spearman"], rows))
    return "\n".join(text), data


def diagnosis_section(pipeline) -> tuple[str, dict]:
    folder, text, data = pipeline.folder, ["## 3. Scaling-law diagnosis\n"], {}
    text.append(
        "Four quantities: μ̄ mean candidate utility, σ̄ mean within-query spread, c collapse rate "
        f"(users whose score spread is at most τ = {pipeline.config.collapse_tau} of the median "
        "user's), ρ̄ mean score–utility correlation over non-collapsed queries; h is the share of "
        "those with ρ_q < 0; among pools whose utilities vary, *by chance* is the share of ρ_q < 0 "
        "that sampling noise alone would give at this pool size if every such pool had their mean "
        "correlation. corr(ρ_q, σ_q) far from 0 breaks the four-quantity factorization. Law errors: "
        "maximum over N of |law − observed| as a share of the oracle gain at N = M (target: "
        "per-query law ≤ 10%).\n")
    for task, policy in pipeline.cells():
        diag = read_json(folder.diagnosis(task.name, policy))
        data[f"{task.name}/{policy}"] = {k: {kk: vv for kk, vv in v.items()
                                             if kk not in ("rho_q", "flat_q")}
                                         for k, v in diag.items()}
        rows, names = [], [n for n in diag if n != "random"]
        for name in diag:
            d = diag[name]
            err = {law: d["law_errors"][law]["max_share_of_oracle_gain"] for law in LAWS}
            rows.append([name, f"{d['mu_bar']:.3f}", f"{d['sigma_bar']:.3f}", f"{d['collapse_rate']:.2f}",
                         f"{d['rho_bar']:.3f}", f"{d['hacked_share']:.2f}",
                         f"{d['hacked_share_informative']:.2f}", f"{d['hacked_share_expected_by_chance']:.2f}",
                         f"{d['rho_bar_pos']:.3f}",
                         f"{d['rho_bar_neg']:.3f}", f"{d['rho_sigma_correlation']:.2f}",
                         f"{len(d['hacked_queries'])}",
                         *[f"{err[law]:.1%}" for law in LAWS]])
        text.append(f"### {task.name} / {policy}\n")
        text.append(_table(["selector", "μ̄", "σ̄", "c", "ρ̄", "h", "h (pools with spread)", "… by chance", "ρ̄₊", "ρ̄₋",
                            "corr(ρ_q, σ_q)", "hacked (p<.05)", "per-query law err", "four-quantity err",
                            "per-query anchored err", "four-quantity anchored err"], rows))
        text.append(f"![law](figures/{_law_figure(folder, task.name, policy, diag, names)})\n")
        text.append(f"![failures](figures/{_failure_figure(folder, task.name, policy, diag, names)})\n")
        for name in names:
            d = diag[name]
            if d["collapsed_users"] or d["hacked_queries"]:
                collapsed = ", ".join(str(c["user"]) for c in d["collapsed_users"][:8]) or "none"
                hacked = ", ".join(f"{h['query']} (ρ={h['rho']:.2f})" for h in d["hacked_queries"][:8]) or "none"
                text.append(f"- **{name}**: collapsed users: {collapsed}; most hacked queries: {hacked}\n")
    return "\n".join(text), data


def _law_figure(folder, task: str, policy: str, diag: dict, names: list[str]) -> str:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        d = diag[name]
        n = np.arange(1, len(d["observed"]) + 1)
        ax.plot(n, d["oracle"], color="black", linewidth=1, label="oracle")
        ax.plot(n, d["observed"], color="tab:blue", linewidth=2, label="observed")
        ax.plot(n, d["laws"]["per_query"], color="tab:orange", linestyle="--", label="per-query law")
        ax.plot(n, d["laws"]["four_quantity"], color="tab:green", linestyle=":", label="four-quantity law")
        ax.plot(n, d["laws"]["per_query_oracle_anchored"], color="tab:red", linestyle="-.",
                label="oracle-anchored law")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name}\nρ̄={d['rho_bar']:.2f}, c={d['collapse_rate']:.2f}, h={d['hacked_share']:.2f}",
                     fontsize=9)
        ax.set_xlabel("N")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].set_ylabel(f"{PRIMARY} of the pick")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{task} / {policy}: does the law predict each reward model's Best-of-N curve?")
    fig.tight_layout()
    return _save(fig, folder.figures / f"law_{task}_{policy}.png")


def _failure_figure(folder, task: str, policy: str, diag: dict, names: list[str]) -> str:
    """Two panels, one row per selector: within-query correlations (hacking) and users'
    score spreads relative to the median user (collapse), each with its threshold."""
    rng = np.random.default_rng(0)
    fig, (top, bottom) = plt.subplots(1, 2, figsize=(12, 0.55 * len(names) + 1.8), sharey=True)
    for row, name in enumerate(names):
        d = diag[name]
        rho = np.asarray(d["rho_q"])
        flat = np.asarray(d["flat_q"], dtype=bool)
        rho = rho[~flat]
        jitter = row + rng.uniform(-0.25, 0.25, len(rho))
        top.scatter(rho, jitter, s=8, alpha=0.5, c=np.where(rho < 0, "tab:red", "tab:blue"))
        top.text(1.02, row, f"{np.mean(rho < 0):.0%} < 0 (chance {d['hacked_share_expected_by_chance']:.0%})",
                 va="center", fontsize=7, transform=top.get_yaxis_transform())
        spread = np.asarray(list(d["user_score_spread"].values()))
        ratio = spread / max(np.median(spread), 1e-12)
        bottom.scatter(np.maximum(ratio, 1e-3), row + rng.uniform(-0.25, 0.25, len(ratio)), s=12, alpha=0.6,
                       c=np.where(ratio <= pipeline_tau(d), "tab:red", "tab:gray"))
        bottom.text(1.02, row, f"{len(d['collapsed_users'])} of {len(spread)} collapsed", va="center",
                    fontsize=7, transform=bottom.get_yaxis_transform())
    top.axvline(0, color="red", linewidth=1)
    top.set_xlim(-1, 1)
    top.set_yticks(range(len(names)), names, fontsize=8)
    top.set_xlabel("within-query corr(score, utility); red = hacked (ρ_q < 0)")
    top.set_title("query-level reward hacking (pools with a utility spread)", fontsize=9)
    tau = pipeline_tau(diag[names[0]])
    bottom.axvline(tau, color="red", linewidth=1)
    bottom.set_xscale("log")
    bottom.set_xlabel(f"user's score spread / median user's; red = collapsed (≤ τ = {tau:g})")
    bottom.set_title("user-level collapse", fontsize=9)
    fig.suptitle(f"{task} / {policy}: where each reward model fails", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.5)
    return _save(fig, folder.figures / f"failures_{task}_{policy}.png")


def pipeline_tau(diagnosis: dict) -> float:
    """The collapse threshold as a share of the median user's spread."""
    spread = np.asarray(list(diagnosis["user_score_spread"].values()))
    median = float(np.median(spread))
    return diagnosis["collapse_threshold"] / median if median > 0 else 0.0


def allocation_section(pipeline) -> tuple[str, dict]:
    folder, text, data = pipeline.folder, ["## 4. The law as a controller of test-time compute\n"], {}
    text.append("Every policy spends the same average number of samples per query on the test users' pools "
                "(drawn without replacement in seeded random orders, 20 repeats). *uniform*: the same N "
                "everywhere; *skip_collapsed*: users whose pilot scores are flat get nothing beyond "
                "the pilot, the rest share the budget evenly; *greedy*: each next sample to the query "
                "with the largest predicted gain κ·ŝ_q·(e_{n+1} − e_n); *early_stop*: sample while that "
                "gain exceeds a threshold set to meet the budget.\n")
    for task, policy in pipeline.cells():
        result = read_json(folder.allocation(task.name, policy))
        data[f"{task.name}/{policy}"] = result
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        rows = []
        for name, c in result["policies"].items():
            curve = {"n": c["samples_per_query"], "mean": [k["mean"][0] for k in c["curve"]],
                     "low": [k["low"][0] for k in c["curve"]], "high": [k["high"][0] for k in c["curve"]]}
            _band(ax, curve, name, marker="o", markersize=3)
            need = c["samples_to_reach_uniform_8"]
            rows.append([name, *[f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi, b in
                                 zip(curve["mean"], curve["low"], curve["high"], c["budget"]) if b in (2, 4, 8)],
                         f"{need:.2f}" if need is not None else "not reached"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples spent per query (average)")
        ax.set_ylabel(f"{PRIMARY} of the pick")
        ax.set_title(f"{task.name} / {policy}: where should samples go? ({result['selector']})", fontsize=10)
        ax.legend(fontsize=8)
        name = _save(fig, folder.figures / f"allocation_{task.name}_{policy}.png")
        text.append(f"### {task.name} / {policy}\n\n![allocation](figures/{name})\n")
        header = [f"{b} per query" for b in (2, 4, 8) if b in result["policies"]["uniform"]["budget"]]
        text.append(_table(["policy", *header, "samples to reach uniform N=8"], rows))
    return "\n".join(text), data


def write_report(pipeline) -> str:
    """Write ``report.md``, the figures and ``report.json``; return the report's path."""
    cfg = pipeline.config
    parts = [f"# TTP report: {pipeline.folder.root}\n",
             f"Tasks: {', '.join(t.name for t in pipeline.tasks)}. Policies: {', '.join(cfg.policies)}. "
             f"Pool size M = {cfg.sampling.n}, temperature {cfg.sampling.temperature}, top-p "
             f"{cfg.sampling.top_p}, seed {cfg.seed}, backend {cfg.backend}. User split "
             f"(train/validation/test) {cfg.split}.\n"]
    everything = {"config": cfg.to_json()}
    for key, section in (("ceiling", ceiling_section), ("rewards", rewards_section),
                         ("diagnosis", diagnosis_section), ("allocation", allocation_section)):
        text, data = section(pipeline)
        parts.append(text)
        everything[key] = data
    write_json_atomic(pipeline.folder.root / "report.json", everything)
    write_bytes_atomic(pipeline.folder.report, "\n".join(parts).encode("utf-8"))
    return str(pipeline.folder.report)
