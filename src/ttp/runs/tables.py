"""Every table of a run, built once as data from the stage results (read by runs/results.py);
the CLI renders them with rich and the report as Markdown, so the two never drift apart."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ttp.analysis.allocation import REFERENCE_BUDGET, AllocationStudy
from ttp.analysis.bon import Curve, oracle_gain
from ttp.analysis.scaling import HELD_OUT_LAW, LAW_TOLERANCE, LAWS, PER_QUERY_LAWS, Diagnosis, chance_misses
from ttp.rewards.families import FAMILIES, family_of, head_of
from ttp.rewards.selection import Selector
from ttp.runs.folder import RunFolder
from ttp.runs.results import read_allocation, read_curves, read_diagnoses, read_reward_eval
from ttp.tasks.utility import PRIMARY

ALLOCATION_BUDGETS = (2, 4, 8)
LAW_LABELS = {"per_query": "Gauss per-query", "four_quantity": "Gauss 4-qty",
              "per_query_oracle_anchored": "anchored per-query", "four_quantity_oracle_anchored": "anchored 4-qty",
              "copula_per_query": "copula per-query", "copula_pooled": "copula pooled",
              HELD_OUT_LAW: "copula per-query, val. λ̂"}
LAW_GAPS = {"factorization_gaussian": "fact. gap Gauss", "factorization_copula": "fact. gap copula",
            "non_gaussian_utilities": "non-Gauss gap"}


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""   # a line under the table: what its rows add up to

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n" + (f"\n{self.caption}\n" if self.caption else "")


def at_points(m: int) -> list[int]:
    """The N at which tables report a curve of a pool of size m: 1, 4, 16 and M itself."""
    return sorted({n for n in (1, 4, 16) if n <= m} | {m})


def _ci(curve: Curve, n: int) -> str:
    mean, low, high = curve.at(n)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _share(values) -> str:
    return "-" if values is None else f"{values[0]:.2f} [{values[1]:.2f}, {values[2]:.2f}]"


def _difference(values) -> str:
    return "-" if values is None else f"{values[0]:+.3f} [{values[1]:+.3f}, {values[2]:+.3f}]"


def ceiling_table(task: str, curves: dict[str, dict], metric: str = PRIMARY) -> Table:
    """``curves``: each policy's ``curves.json``."""
    rows, m = [], None
    for policy, by_metric in curves.items():
        r = by_metric[metric]
        oracle, rand = Curve.from_json(r["oracle"]), Curve.from_json(r["random"])
        m = len(oracle.n)
        fits = "; ".join(f"{f['form']}: b={f['b']:.4f}, rmse={f['rmse']:.4f}" for f in r["ceiling_fits"])
        rows.append([policy, str(r["queries"]), str(r["users"]), *[_ci(oracle, n) for n in at_points(m)],
                     _ci(rand, 1), _ci(rand, m), f"**{r['ceiling_fits'][0]['form']}** ({fits})"])
    return Table(f"{task}: Best-of-N {metric} of oracle and random selection (95% CI over users)",
                 ["policy", "queries", "users", *[f"oracle N={n}" for n in at_points(m)], "random N=1",
                  f"random N={m}", "ceiling fits (best first)"], rows)


def rewards_table(task: str, policy: str, ev: dict) -> Table:
    m = ev["pool_size"]
    points = at_points(m)
    oracle = Curve.from_json(ev["oracle"])
    rows = [["oracle", *[_ci(oracle, n) for n in points], "1", "1", "-"]]
    for name, sel in ev["selectors"].items():
        curve = Curve.from_json(sel["curve"])
        rows.append([name, *[_ci(curve, n) for n in points], _share(sel["oracle_gain_share"].get(str(m))),
                     f"{sel['mean_spearman']:.3f}",
                     f"{sel['mean_sd_correlation']:.2f}" if "mean_sd_correlation" in sel else "-"])
    return Table(f"{task} / {policy}: {ev['metric']} of Best-of-N on {ev['queries']} test queries "
                 f"({ev['users']} held-out users), 95% CI over users",
                 ["selector", *[f"N={n}" for n in points], f"gain share N={m}", "Spearman", "corr(mean, sd)"], rows)


def learning_curve_table(task: str, policy: str, result: dict) -> Table:
    """``result``: a cell's ``learning_curve.json``; one row per selector, one column per k."""
    points = result["points"]
    m = str(points[0]["pool_size"])
    rows = [[name, *[_share(p["selectors"][name]["oracle_gain_share"].get(m)) for p in points]]
            for name in points[0]["selectors"]]
    rows += [[f"{name}: expected improvement's samples to reach uniform N={REFERENCE_BUDGET}",
              *[_samples_to_reach(AllocationStudy.from_json(p["allocation"][name]), "expected_improvement")
                for p in points]]
             for name in points[0]["allocation"]]
    sizes = "; ".join(f"k = {p['items_per_user']}: {p['history_pools']} history pools, "
                      f"{p['history_candidates']} candidates" for p in points)
    return Table(f"{task} / {policy} by history items per user k: share of the oracle gain at N = {m} on test "
                 f"users (95% CI), and the samples expected improvement needs to match uniform N = "
                 f"{REFERENCE_BUDGET}",
                 ["selector", *[f"k = {p['items_per_user']}" for p in points]], rows,
                 f"beside {points[0]['training_candidates']} candidates of the training users' pools; {sizes}")


def diagnosis_table(task: str, policy: str, diagnoses: dict[str, Diagnosis]) -> Table:
    rows = []
    for name, d in diagnoses.items():
        rows.append([name, *[f"{v:.3f}" for v in (d.mu_bar, d.sigma_bar)], f"{d.collapse_rate:.2f}",
                     f"{d.rho_bar:.3f}", f"{d.hacked_share:.2f}", f"{d.hacked_share_informative:.2f}",
                     f"{d.hacked_share_expected_by_chance:.2f}", f"{d.rho_bar_pos:.3f}", f"{d.rho_bar_neg:.3f}",
                     f"{d.rho_sigma_correlation:.2f}", f"{d.flat_pool_share:.2f}", f"{d.zero_utility_share:.2f}",
                     str(len(d.collapsed_users)), str(len(d.hacked_queries))])
    return Table(f"{task} / {policy}: the four quantities and the failure modes",
                 ["selector", "μ̄", "σ̄", "c", "ρ̄", "h", "h (pools with spread)", "h by chance", "ρ̄₊", "ρ̄₋",
                  "corr(ρ_q, σ_q)", "flat pools", "U=0 share", "collapsed users", "hacked (p<.05)"], rows)


def laws_table(task: str, policy: str, diagnoses: dict[str, Diagnosis]) -> Table:
    rows = []
    for name, d in diagnoses.items():
        in_se = d.error_in_se("copula_per_query")
        chance = (d.chance_beyond_tolerance or {}).get("copula_per_query")
        gain = oracle_gain(d.oracle)
        rows.append([name, f"{d.copula_r_bar:.3f}", d.top_compression_text, d.held_out_compression_text,
                     *[f"{d.law_errors[law]['max_share_of_oracle_gain']:.1%}" if law in d.law_errors else "-"
                       for law in LAWS],
                     f"{d.law_se['copula_per_query'].max() / gain:.1%}" if in_se is not None and gain > 0 else "-",
                     f"{in_se:.1f}" if in_se is not None else "-",
                     f"{chance:.2f}" if chance is not None else "-"])
    return Table(f"{task} / {policy}: each law's max error over N, as a share of the oracle gain at N = M "
                 f"(the copula laws with these pools' own top compression λ̂ ± its standard error, and the "
                 f"per-query one again with the validation users' λ̂); "
                 f"the copula per-query law's standard error (of observed − law over queries, largest over N, "
                 f"same scale), its worst error in those standard errors, and how likely a law exact for every "
                 f"query would still err by more than {LAW_TOLERANCE:.0%} at this number of queries",
                 ["selector", "copula r̄", "copula λ̂", "val. λ̂", *[LAW_LABELS[law] for law in LAWS], "copula SE",
                  "copula err / SE", f"exact law > {LAW_TOLERANCE:.0%}"], rows,
                 _tolerance_caption([d for name, d in diagnoses.items() if name != "random"]))


def law_gaps_table(task: str, policy: str, diagnoses: dict[str, Diagnosis]) -> Table:
    return Table(f"{task} / {policy}: where the laws part, the largest gap between two laws' curves over N as a "
                 f"share of the oracle gain at N = M: each pooled law from its per-query form (the factorization), "
                 f"and the Gaussian per-query law from the copula one (non-Gaussian utilities)",
                 ["selector", *LAW_GAPS.values()],
                 [[name, *[f"{d.law_gaps[k]:.1%}" for k in LAW_GAPS]] for name, d in diagnoses.items()])


def _tolerance_caption(diagnoses: list[Diagnosis]) -> str:
    """How many selectors each per-query law fits within the target, against how many a law exact
    for every query would miss by chance (the selectors drawn jointly: they share pools)."""
    gain = oracle_gain(diagnoses[0].oracle) if diagnoses else 0.0
    parts = []
    for law in [law for law in PER_QUERY_LAWS if all(law in d.law_errors for d in diagnoses)]:
        missed = sum(d.law_errors[law]["max_share_of_oracle_gain"] > LAW_TOLERANCE for d in diagnoses)
        part = (f"the {LAW_LABELS[law]} law is within {LAW_TOLERANCE:.0%} for {len(diagnoses) - missed} of "
                f"{len(diagnoses)}")
        if gain > 0 and all(f"residual:{law}" in d.per_query for d in diagnoses):
            counts = chance_misses([np.asarray(d.per_query[f"residual:{law}"], dtype=float)[:, 1:]
                                    for d in diagnoses], LAW_TOLERANCE * gain)
            as_many = (counts >= missed).mean()
            part += (f" (were it exact for every query, it would miss for {counts.mean():.1f} on average by chance, "
                     f"be within for all with probability {(counts == 0).mean():.2f}, and miss for {missed} or more "
                     f"with probability " + (f"{as_many:.3f})" if as_many > 0 else f"below {1 / len(counts):.4f})"))
        parts.append(part)
    return f"Selectors: {'; '.join(parts)}." if diagnoses else ""


PEER_SHARE = 0.23   # the closest peer: off-the-shelf RMs capture at most 23% of the oracle headroom


def _family_order(name: str) -> int:
    """Random first, then the trained families in their registry's order, then the rest."""
    return ["baseline", *FAMILIES, "zero-shot", "external"].index(family_of(Selector.parse(name).model))


def comparison_table(task: str, policy: str, ev: dict, diagnoses: dict[str, Diagnosis]) -> Table:
    """Every family x head x rule on the same held-out users: share of the oracle gain, the
    failure modes against chance, and the per-query laws' error."""
    points = [n for n in (4, 16) if str(n) in next(iter(ev["selectors"].values()))["oracle_gain_share"]]
    last = str(points[-1]) if points else None
    untrained = next((s["vs_best_untrained"]["selector"] for s in ev["selectors"].values() if "vs_best_untrained" in s),
                     None)
    minutes = ev.get("train_seconds", {})
    rows = []
    for name, sel in sorted(ev["selectors"].items(), key=lambda kv: _family_order(kv[0])):
        selector, d = Selector.parse(name), diagnoses[name]
        seconds = minutes.get(selector.model)
        rows.append([family_of(selector.model), head_of(selector.model), selector.rule or "-",
                     *[_share(sel["oracle_gain_share"].get(str(n))) for n in points],
                     *([_difference(sel.get("vs_best_untrained", {}).get(last))] if untrained else []),
                     "-" if seconds is None else f"{seconds / 60:.1f}",
                     f"{d.rho_bar:.3f}", f"{d.collapse_rate:.2f}",
                     f"{d.hacked_share_informative:.2f} / {d.hacked_share_expected_by_chance:.2f}",
                     str(len(d.collapsed_users)), str(len(d.hacked_queries)),
                     *[f"{d.law_errors[law]['max_share_of_oracle_gain']:.1%}" for law in ("per_query",
                                                                                          "copula_per_query")]])
    return Table(f"{task} / {policy}: reward-model families on {ev['queries']} test queries ({ev['users']} held-out "
                 f"users); share of the oracle gain with 95% CI (the closest peer reports at most "
                 f"{PEER_SHARE:.2f} for off-the-shelf RMs)",
                 ["family", "head / scorer", "rule", *[f"gain share N={n}" for n in points],
                  *([f"vs {untrained} N={last} [95% CI]"] if untrained else []), "train min", "ρ̄", "c",
                  "h / by chance", "collapsed users", "hacked queries", "law err Gauss", "law err copula"], rows)


def _samples_to_reach(study: AllocationStudy, policy: str) -> str:
    """``need (share) [low, high]``: the samples ``policy`` needs to reach uniform N = 8, as a
    share of those 8, with its band over resampled users (a run folder from before the band
    shows the need alone)."""
    need = study.samples_to_reach_reference(policy)
    if need is None or math.isnan(need):
        return "not reached"
    said = f"{need:.2f} ({need / REFERENCE_BUDGET:.0%})"
    band = study.reference_bands.get(policy)
    if band is None:
        return said
    low, high = ("not reached" if math.isinf(v) else f"{v:.2f}" for v in band)
    return f"{said} [{low}, {high}]"


def allocation_table(task: str, policy: str, study: AllocationStudy) -> Table:
    rows = []
    for name, curve in study.curves.items():
        cells = []
        for budget in ALLOCATION_BUDGETS:
            point = curve.at(budget)
            cells.append("-" if point is None else
                         f"{point[0]:.4f} [{point[1]:.4f}, {point[2]:.4f}] ({point[3]:.2f})")
        rows.append([name, *cells, _samples_to_reach(study, name)])
    return Table(f"{task} / {policy}: {PRIMARY} on {study.queries} test queries at equal average budgets "
                 f"(samples really spent), samples chosen by {study.selector} (κ = {study.kappa:.3f}; expected "
                 f"improvement shrinks a query's score spread with {study.prior_strength:g} pseudo-draws, chosen on "
                 f"validation users)",
                 ["allocation", *[f"{b} per query" for b in ALLOCATION_BUDGETS],
                  f"samples to reach uniform N={REFERENCE_BUDGET} [95% CI]"], rows)


def stage_tables(folder: RunFolder, stage: str, tasks: list[str], policies: list[str]) -> list[Table]:
    """The tables a stage's results fill (none for stages that only write data)."""
    if stage == "curves":
        return [ceiling_table(task, {p: read_curves(folder, task, p) for p in policies}) for task in tasks]
    tables = []
    for task in tasks:
        for policy in policies:
            if stage == "rewards":
                tables.append(rewards_table(task, policy, read_reward_eval(folder, task, policy)))
            elif stage == "diagnose":
                diagnoses = read_diagnoses(folder, task, policy)
                tables += [diagnosis_table(task, policy, diagnoses), laws_table(task, policy, diagnoses),
                           law_gaps_table(task, policy, diagnoses),
                           comparison_table(task, policy, read_reward_eval(folder, task, policy), diagnoses)]
            elif stage == "allocate":
                tables.append(allocation_table(task, policy, read_allocation(folder, task, policy)))
    return tables
