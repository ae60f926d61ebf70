"""The report and the CLI tables, on a run folder filled from simulated pools with a planted
collapse (no model needed): both render the same table data, and the numbers are the analysis's."""
import json
from importlib import metadata

import numpy as np
import pandas as pd
import pytest

from ttp.analysis.allocation import allocation_study
from ttp.analysis.bon import oracle_curves, random_curves, user_bootstrap
from ttp.analysis.pools import Pools
from ttp.analysis.scaling import HELD_OUT_LAW, diagnose, fit_ceiling, held_out_top_compression
from ttp.analysis.simulate import SimulationConfig, simulate
from ttp.files import write_json_atomic
from ttp.runs.config import RunConfig, TaskSpec
from ttp.runs.evaluation import evaluate_selectors
from ttp.runs.folder import RunFolder
from ttp.runs.report import write_report
from ttp.runs.results import write_diagnoses
from ttp.runs.tables import stage_tables

TASK, POLICY = "sim-task", "personalized"


def _frame(sim, seed_shift=0):
    q, m = sim.scores.shape
    return pd.DataFrame({
        "query_id": np.repeat([f"q{i:03d}" for i in range(q)], m), "user": np.repeat(sim.users.astype(str), m),
        "candidate": np.tile(np.arange(m), q), "rougeL": sim.utilities.ravel(), "rouge1": sim.utilities.ravel(),
        "score:pointwise": sim.scores.ravel(), "score:random": 0.0,
        "score:probabilistic/mean": sim.scores.ravel()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = RunFolder(tmp_path_factory.mktemp("run"))
    base = dict(n_users=20, queries_per_user=4, pool_size=8, collapsed_user_share=0.2)
    test = simulate(SimulationConfig(**base, seed=1))
    val = Pools.from_frame(_frame(simulate(SimulationConfig(**base, seed=2))))
    pools = Pools.from_frame(_frame(test))
    curves = {}
    for metric in ("rougeL", "rouge1"):
        oracle = user_bootstrap(oracle_curves(pools[metric]), pools.users, 200)
        curves[metric] = {"oracle": oracle.to_json(), "queries": len(pools), "users": 20,
                          "random": user_bootstrap(random_curves(pools[metric]), pools.users, 200).to_json(),
                          "ceiling_fits": [f.__dict__ for f in fit_ceiling(oracle.mean)]}
    write_json_atomic(folder.curves(TASK, POLICY), curves)
    write_json_atomic(folder.reward_eval(TASK, POLICY), evaluate_selectors(pools, 200))
    # as the diagnose stage does: λ̂ carried over from the validation users' pools where they measure one
    diagnoses = {name: diagnose(pools[f"score:{name}"], pools["rougeL"], pools.users, pools.query_ids,
                                held_out=held_out_top_compression(val[f"score:{name}"], val["rougeL"], val.users))
                 for name in ("pointwise", "random", "probabilistic/mean")}
    write_diagnoses(folder, TASK, POLICY, diagnoses)
    study = allocation_study("probabilistic/mean", (val["score:pointwise"], val["rougeL"]),
                             (pools["score:pointwise"], pools["rougeL"], pools.users), n_boot=200)
    write_json_atomic(folder.allocation(TASK, POLICY), study.to_json())
    config = RunConfig(tasks=(TaskSpec(path="unused"),), policies=(POLICY,))
    return folder, config, test, diagnoses, study


def test_report_tables_are_the_cli_tables_and_hold_the_analysis_numbers(run):
    folder, config, test, diagnoses, study = run
    report = __import__("pathlib").Path(write_report(folder, config, [TASK])).read_text()
    assert "Convention **ttp** (ROUGE with Porter stemming" in report
    for stage in ("curves", "rewards", "diagnose", "allocate"):
        for table in stage_tables(folder, stage, [TASK], [POLICY]):
            assert table.to_markdown() in report, stage
    diagnosis, laws, gaps, comparison = stage_tables(folder, "diagnose", [TASK], [POLICY])
    rows = {row[0]: dict(zip(diagnosis.columns, row)) for row in diagnosis.rows}
    for name, d in diagnoses.items():
        assert rows[name]["ρ̄"] == f"{d.rho_bar:.3f}" and rows[name]["c"] == f"{d.collapse_rate:.2f}"
    assert rows["pointwise"]["collapsed users"] == str(len(test.collapsed_users))
    errors = {row[0]: dict(zip(laws.columns, row)) for row in laws.rows}
    gap_rows = {row[0]: dict(zip(gaps.columns, row)) for row in gaps.rows}
    assert gap_rows["pointwise"]["non-Gauss gap"] == f"{diagnoses['pointwise'].law_gaps['non_gaussian_utilities']:.1%}"
    # the CLI prints the laws table whole, even with the longest selector name a run has
    from ttp.cli import console, render
    from ttp.runs.tables import Table
    longest = [["cross_encoder.probabilistic/p_improve", *row[1:]] for row in laws.rows]
    with console.capture() as captured:
        render(Table(laws.title, laws.columns, longest))
    assert all(cell in captured.get() for row in longest for cell in row)
    for name, d in diagnoses.items():
        share = d.law_errors["copula_per_query"]["max_share_of_oracle_gain"]
        assert errors[name]["copula per-query"] == f"{share:.1%}"
        assert errors[name]["copula err / SE"] == f"{d.error_in_se('copula_per_query'):.1f}"
        se = d.copula_top_compression_se
        assert errors[name]["copula λ̂"] == f"{d.copula_top_compression:.2f}" + ("" if se is None else f" ± {se:.2f}")
        assert (se is None) == (name == "random")   # the random selector's pools are all collapsed
        assert errors[name]["exact law > 5%"] == f"{d.chance_beyond_tolerance['copula_per_query']:.2f}"
        held, held_se = d.held_out_top_compression, d.held_out_top_compression_se
        assert (held is None) == (name == "random")   # so are the validation users' pools
        assert errors[name]["val. λ̂"] == ("-" if held is None else f"{held:.2f} ± {held_se:.2f}")
        assert errors[name]["copula per-query, val. λ̂"] == (
            "-" if held is None else f"{d.law_errors[HELD_OUT_LAW]['max_share_of_oracle_gain']:.1%}")
    fitted = [d for n, d in diagnoses.items() if n != "random"]
    within = sum(d.law_errors["copula_per_query"]["max_share_of_oracle_gain"] <= 0.05 for d in fitted)
    misses = sum(d.chance_beyond_tolerance["copula_per_query"] for d in fitted)
    copula = laws.caption.split("; ")[1]
    assert copula.startswith(f"the copula per-query law is within 5% for {within} of {len(fitted)} (were it exact")
    # the joint draw's mean count of misses is the sum of each selector's own chance
    assert float(copula.split("it would miss for ")[1].split(" ")[0]) == pytest.approx(misses, abs=0.1)
    assert laws.caption.startswith("Selectors: the Gauss per-query law is within 5% for ")
    within = sum(d.law_errors[HELD_OUT_LAW]["max_share_of_oracle_gain"] <= 0.05 for d in fitted)
    assert laws.caption.split("; ")[2].startswith(f"the copula per-query, val. λ̂ law is within 5% for {within} of ")
    assert laws.caption in report
    # one row per selector, named by family, head and rule, with the same numbers
    evaluation = json.loads(folder.reward_eval(TASK, POLICY).read_text())["selectors"]
    by_selector = {(r[0], r[1], r[2]): dict(zip(comparison.columns, r)) for r in comparison.rows}
    assert set(by_selector) == {("baseline", "random", "-"), ("features", "pointwise", "-"),
                                ("features", "probabilistic", "mean")}
    prob = by_selector[("features", "probabilistic", "mean")]
    low_high = evaluation["probabilistic/mean"]["oracle_gain_share"]["4"]
    assert prob["gain share N=4"] == f"{low_high[0]:.2f} [{low_high[1]:.2f}, {low_high[2]:.2f}]"
    assert by_selector[("features", "pointwise", "-")]["collapsed users"] == str(len(test.collapsed_users))
    assert prob["law err copula"] == errors["probabilistic/mean"]["copula per-query"]
    [allocation] = stage_tables(folder, "allocate", [TASK], [POLICY])
    uniform = next(r for r in allocation.rows if r[0] == "uniform")
    assert uniform[3].startswith(f"{study.curves['uniform'].at(8)[0]:.4f}")
    need, (low, high) = study.samples_to_reach_reference("expected_improvement"), \
        study.reference_bands["expected_improvement"]
    assert low <= need <= high
    stopping = next(r for r in allocation.rows if r[0] == "expected_improvement")
    high = "not reached" if high == float("inf") else f"{high:.2f}"   # a small run: some resamples never reach it
    assert stopping[-1] == f"{need:.2f} ({need / 8:.0%}) [{low:.2f}, {high}]"


def test_report_writes_every_figure_and_a_json_of_everything(run):
    folder, config, test, _, _ = run
    write_report(folder, config, [TASK])
    names = {p.name for p in folder.figures.glob("*.png")}
    assert names == {f"{kind}_{TASK}_{POLICY}.png" for kind in ("rewards", "law", "failures", "allocation")} | \
        {f"ceiling_{TASK}.png"}
    assert all((folder.figures / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    data = json.loads(folder.report_json.read_text())
    assert set(data) == {"ttp_version", "config", "ceiling", "rewards", "diagnosis", "allocation"}
    assert data["ttp_version"] == metadata.version("ttp")
    report = folder.report.read_text()
    assert f"Written by ttp {metadata.version('ttp')}." in report
    assert f"shrinks a query's score spread with {run[4].prior_strength:g} pseudo-draws" in report
    collapsed = {c["user"] for c in data["diagnosis"][f"{TASK}/{POLICY}"]["pointwise"]["collapsed_users"]}
    assert collapsed == {str(u) for u in test.collapsed_users}


def test_a_damaged_or_missing_result_file_names_itself_the_field_and_the_command_that_writes_it(run):
    from ttp.files import DataFileError

    folder = run[0]
    for path, damage, stage, says in (
            (folder.allocation(TASK, POLICY), lambda d: d.pop("curves"), "allocate", "field 'curves' is missing"),
            (folder.allocation(TASK, POLICY), lambda d: d["samples_to_reach_reference_band"].update(uniform=[8.0]),
             "allocate", "wrong shape"),
            (folder.allocation(TASK, POLICY), lambda d: d.update(kappa="x"), "allocate",
             "field 'kappa' is 'x', not a number"),
            (folder.allocation(TASK, POLICY), lambda d: d.update(prior_strength=0), "allocate",
             "field 'prior_strength' is 0, not a positive number"),
            (folder.allocation(TASK, POLICY), lambda d: d["curves"]["uniform"]["mean"].__setitem__(0, "x"), "allocate",
             "curve 'uniform': field 'mean' is 'x', not a number"),
            (folder.curves(TASK, POLICY), lambda d: d["rougeL"].pop("ceiling_fits"), "curves",
             "metric 'rougeL': field 'ceiling_fits' is missing"),
            (folder.curves(TASK, POLICY), lambda d: d["rougeL"]["oracle"]["mean"].__setitem__(0, "x"), "curves",
             "metric 'rougeL': field 'mean' is not a list of numbers"),
            (folder.reward_eval(TASK, POLICY), lambda d: d["selectors"]["pointwise"].update(mean_spearman="x"),
             "rewards", "selector 'pointwise': field 'mean_spearman' is 'x', not a number"),
            (folder.reward_eval(TASK, POLICY), lambda d: d.pop("pool_size"), "rewards", "field 'pool_size' is missing"),
            (folder.diagnosis(TASK, POLICY), lambda d: d["pointwise"].pop("oracle"), "diagnose", "'oracle'"),
            (folder.diagnosis(TASK, POLICY), lambda d: d["pointwise"].update(copula_top_compression_se="x"), "diagnose",
             "selector 'pointwise': field 'copula_top_compression_se' is 'x', not a number")):
        intact = path.read_text()
        data = json.loads(intact)
        damage(data)
        path.write_text(json.dumps(data))
        try:
            with pytest.raises(DataFileError) as err:
                stage_tables(folder, stage, [TASK], [POLICY])
            assert str(path) in str(err.value) and says in str(err.value)
            assert f"ttp {stage} {folder.root}" in str(err.value)
        finally:
            path.write_text(intact)
    for path, stage in ((folder.allocation(TASK, POLICY), "allocate"), (folder.diagnosis(TASK, POLICY), "diagnose"),
                        (folder.reward_eval(TASK, POLICY), "rewards"), (folder.curves(TASK, POLICY), "curves")):
        intact = path.read_bytes()
        path.unlink()
        try:
            with pytest.raises(FileNotFoundError,
                               match=f"{path.name} is missing: run `ttp {stage} {folder.root}` first"):
                stage_tables(folder, stage, [TASK], [POLICY])
        finally:
            path.write_bytes(intact)


def test_per_query_values_live_in_a_table_beside_the_diagnosis(run):
    from dataclasses import asdict

    from ttp.analysis.scaling import _jsonable
    from ttp.files import DataFileError
    from ttp.runs.results import read_diagnoses

    folder, diagnoses = run[0], run[3]
    assert all("per_query" not in d for d in json.loads(folder.diagnosis(TASK, POLICY).read_text()).values())
    read = read_diagnoses(folder, TASK, POLICY)
    for name, d in diagnoses.items():
        assert set(read[name].per_query) == set(d.per_query)
        for field, values in d.per_query.items():
            np.testing.assert_array_equal(read[name].per_query[field], values)
    # a run written before the table kept the per-query values in the JSON, and had no top
    # compression (its copula laws were the Gaussian copula's): it still reads
    side = folder.diagnosis_per_query(TASK, POLICY)
    intact, table = folder.diagnosis(TASK, POLICY).read_text(), side.read_bytes()
    try:
        earlier = {k: _jsonable(asdict(d)) for k, d in diagnoses.items()}
        for d in earlier.values():
            del d["copula_top_compression"], d["copula_top_compression_se"]
        folder.diagnosis(TASK, POLICY).write_text(json.dumps(earlier))
        side.unlink()
        np.testing.assert_array_equal(read_diagnoses(folder, TASK, POLICY)["pointwise"].per_query["residual:per_query"],
                                      diagnoses["pointwise"].per_query["residual:per_query"])
        old = read_diagnoses(folder, TASK, POLICY)["pointwise"]
        assert (old.copula_top_compression, old.copula_top_compression_se,
                old.top_compression_text) == (1.0, None, "1.00")
        folder.diagnosis(TASK, POLICY).write_text(intact)
        with pytest.raises(FileNotFoundError,
                           match=f"diagnosis_per_query.parquet is missing: run `ttp diagnose {folder.root}` first"):
            read_diagnoses(folder, TASK, POLICY)
        side.write_text("not a table")
        with pytest.raises(DataFileError, match=f"diagnosis_per_query.parquet is not a readable table \\(.*\\); "
                                                f"`ttp diagnose {folder.root}` writes it again$"):
            read_diagnoses(folder, TASK, POLICY)
        pd.DataFrame({"query": ["q000"]}).to_parquet(side)
        with pytest.raises(DataFileError, match="is not a diagnosis table \\(it has no column 'selector'\\)"):
            read_diagnoses(folder, TASK, POLICY)
        side.write_bytes(table)
        pd.read_parquet(side).query("selector != 'pointwise'").to_parquet(side)
        with pytest.raises(DataFileError, match="has no rows for selector 'pointwise'"):
            read_diagnoses(folder, TASK, POLICY)
    finally:
        folder.diagnosis(TASK, POLICY).write_text(intact)
        side.write_bytes(table)


def test_the_cli_never_cuts_a_number_short_in_a_wide_table():
    from ttp.cli import console, render
    from ttp.runs.tables import Table
    # 16 headers as long as the diagnosis table's: unwrapped they would need 400 columns
    headers = [f"h (pools with spread) {i}" for i in range(16)]
    values = [f"{-0.25 + i / 100:.3f}" for i in range(16)]
    description = "a + b ln N (a + b ln N: b=0.1008, rmse=0.0025; a + b e_N: b=0.1635, rmse=0.0057)"
    with console.capture() as captured:
        render(Table("wide", ["selector", *headers, "fits"],
                     [["hidden_state.probabilistic/p_improve", *values, description]]))
    text = captured.get()
    assert "…" not in text
    assert all(value in text for value in values) and "hidden_state.probabilistic/p_improve" in text
    assert max(len(line) for line in text.splitlines()) <= console.width


def test_each_figure_draws_the_curves_it_names(run, monkeypatch):
    import matplotlib.image

    from ttp.runs import report as report_module

    folder, config, _, _, study = run
    drawn, save = {}, report_module.save_figure

    def capture(fig, path):
        drawn[path.name] = {line.get_label(): np.asarray(line.get_ydata(), dtype=float)
                            for ax in fig.axes for line in ax.get_lines()}
        return save(fig, path)

    monkeypatch.setattr(report_module, "save_figure", capture)
    write_report(folder, config, [TASK])
    curves = json.loads(folder.curves(TASK, POLICY).read_text())["rougeL"]
    ceiling = drawn[f"ceiling_{TASK}.png"]
    np.testing.assert_allclose(ceiling[f"{POLICY}: oracle"], curves["oracle"]["mean"])
    np.testing.assert_allclose(ceiling[f"{POLICY}: random"], curves["random"]["mean"])
    evaluation = json.loads(folder.reward_eval(TASK, POLICY).read_text())
    rewards = drawn[f"rewards_{TASK}_{POLICY}.png"]
    np.testing.assert_allclose(rewards["oracle"], evaluation["oracle"]["mean"])
    for name, selector in evaluation["selectors"].items():
        np.testing.assert_allclose(rewards[name], selector["curve"]["mean"])
    allocation = drawn[f"allocation_{TASK}_{POLICY}.png"]
    for policy, curve in study.curves.items():
        assert any(np.allclose(ydata, curve.mean) for ydata in allocation.values() if len(ydata) == len(curve.mean)), \
            policy
    # and every saved file reads back as a picture with something on it
    for name in drawn:
        image = matplotlib.image.imread(folder.figures / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image[..., :3].std() > 0.05, name


def test_the_paired_difference_to_the_best_untrained_selector_is_the_brute_force_one():
    """Every selector against the untrained selector best at N = M: the mean over queries of the
    difference of their exact Best-of-N curves, with a band from resampling users."""
    from ttp.analysis.bon import bon_curves

    sim = simulate(SimulationConfig(n_users=12, queries_per_user=3, pool_size=6, seed=4))
    frame = _frame(sim)
    rng = np.random.default_rng(0)
    frame["score:mbr"] = frame["rougeL"] + rng.normal(0, 0.05, len(frame))       # an untrained selector, good
    frame["score:likelihood"] = rng.normal(size=len(frame))                       # and one no better than chance
    pools = Pools.from_frame(frame)
    ev = evaluate_selectors(pools, 300)
    u = pools["rougeL"]
    best = max(("mbr", "likelihood"), key=lambda n: bon_curves(pools[f"score:{n}"], u)[:, -1].mean())
    assert best == "mbr"
    for name in ("pointwise", "random", "likelihood"):
        entry = ev["selectors"][name]["vs_best_untrained"]
        assert entry["selector"] == "mbr"
        for n in (4, 6):
            diff = (bon_curves(pools[f"score:{name}"], u) - bon_curves(pools["score:mbr"], u))[:, n - 1].mean()
            value, low, high = entry[str(n)]
            assert value == pytest.approx(diff, abs=1e-12) and low <= value <= high
    assert ev["selectors"]["mbr"]["vs_best_untrained"]["6"] == [0.0, 0.0, 0.0]
