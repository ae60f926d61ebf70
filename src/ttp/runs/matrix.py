"""The matrix of cells: every configured task x policy model x prompting, run and summed up in
one table, one row per cell.  ``Matrix(config, root).run()`` tunes the models a task needs
(``ttp.tuning``), runs each task x model as one run folder holding both promptings, and writes
``summary.md``, ``summary.json`` and ``matrix.png``; a rerun resumes every part where it stopped.

The folder: ``matrix.json`` (the configuration), ``models/<task>-tuned/`` (the tuned models),
``<task>--<model>/`` (the runs) and ``sampling.json`` (seconds spent drawing each run's pools).
A tuned run names its model relative to itself, so the folder can be moved or copied whole.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional, get_args

import numpy as np
from filelock import FileLock
from pydantic import Field, model_validator

from ttp.analysis.bon import Curve
from ttp.analysis.scaling import CEILING_FORMS, LAW_TOLERANCE, PER_QUERY_LAWS
from ttp.files import read_json, write_bytes_atomic, write_json_atomic
from ttp.policy import MAX_POOL_SIZE, SamplingParams
from ttp.policy.registry import EngineConfig
from ttp.rewards.families import head_of
from ttp.rewards.selection import Selector
from ttp.runs.config import ConfigError, RunConfig, TaskSpec
from ttp.runs.folder import RunFolder
from ttp.runs.pipeline import STAGES, Pipeline
from ttp.runs.results import read_curves, read_diagnoses, read_reward_eval
from ttp.runs.sampling import read_pools
from ttp.runs.tables import LAW_LABELS, Table
from ttp.tasks.data import load_task
from ttp.tasks.utility import PRIMARY
from ttp.tuning import TuneConfig, tune
from ttp.typed import Settings, Split

PolicyModel = Literal["base", "tuned"]
MODELS = get_args(PolicyModel)
LOG_FORM = next(iter(CEILING_FORMS))     # a + b ln N
SUMMARY_N = 16               # the summary's N: the oracle, the gain shares
PROBABILISTIC = "probabilistic/mean"
STANDARD_HEADS = ("pointwise", "bradley_terry", "ensemble")
WITHIN_SE = 2.0              # a law fits a selector when its worst error is within this many paired SE


class MatrixTask(Settings):
    """One task of the matrix: its folder and its seeded subset of queries per user."""

    path: str
    max_queries_per_user: Optional[int] = Field(None, ge=1)


class MatrixConfig(Settings):
    tasks: tuple[MatrixTask, ...] = Field(min_length=1)
    models: tuple[PolicyModel, ...] = Field(MODELS, min_length=1)
    pool_size: int = Field(16, ge=1, le=MAX_POOL_SIZE, description="candidates per query")
    split: Split = Field((0.45, 0.15, 0.4), description="train, validation, test shares of users")
    seed: int = Field(0, description="seeds the user split, the subsets, sampling, tuning and training")
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _tune_keeps_held_out_users(self):
        if self.tune.split != self.split or self.tune.seed != self.seed:
            raise ValueError("the tune's split and seed must be the matrix's, so its held-out users give no gold")
        return self

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class Matrix:
    def __init__(self, config: MatrixConfig, root: str | Path):
        self.config, self.root = config, Path(root)
        saved = self.root / "matrix.json"
        if saved.exists() and read_json(saved) != config.to_json():
            raise ConfigError(f"{saved} holds another matrix's configuration; use a new folder")
        write_json_atomic(saved, config.to_json())
        self.loaded = {t.path: load_task(t.path) for t in config.tasks}
        self.task_names = {path: task.name for path, task in self.loaded.items()}
        self.layouts = {path: task.layout for path, task in self.loaded.items()}

    def model_folder(self, task: MatrixTask) -> Path:
        return self.root / "models" / f"{self.task_names[task.path]}-tuned"

    def run_folder(self, task: MatrixTask, model: str) -> Path:
        return self.root / f"{self.task_names[task.path]}--{model}"

    def run_config(self, task: MatrixTask, model: str) -> RunConfig:
        c = self.config
        model_path = f"../models/{self.model_folder(task).name}" if model == "tuned" else None
        return RunConfig(tasks=(TaskSpec(path=str(task.path), max_queries_per_user=task.max_queries_per_user),),
                         sampling=SamplingParams(n=c.pool_size, max_tokens=self.layouts[task.path].new_tokens,
                                                 seed=c.seed),
                         split=c.split, seed=c.seed, engine=EngineConfig(model_path=model_path))

    def run(self, on_cell=None) -> Table:
        """Every part not yet done, then the summary; ``on_cell(label)`` says what starts.  A task's
        base cells come before its tune, so that what is done first stands on its own."""
        for task in self.config.tasks:
            for model in self.config.models:
                if model == "tuned":
                    self._announce(on_cell, f"tune {self.task_names[task.path]}")
                    tune(self.loaded[task.path], self.model_folder(task), self.config.tune)
                self._announce(on_cell, f"{self.task_names[task.path]} / {model}")
                self._run_one(task, model)
        return self.write_summary()

    @staticmethod
    def _announce(on_cell, label: str) -> None:
        if on_cell:
            on_cell(label)

    def _run_one(self, task: MatrixTask, model: str) -> None:
        """One run's stages; a run whose report is written is done."""
        folder = RunFolder(self.run_folder(task, model))
        with folder.lock():
            pipeline = Pipeline(self.run_config(task, model), folder.root)
            if folder.report.exists():
                return
            started = time.perf_counter()
            drawn_before = _candidates(folder, self.config.pool_size)
            pipeline.run("sample")
            drawn = _candidates(folder, self.config.pool_size) - drawn_before
            self._add_sampling(folder.root.name, time.perf_counter() - started, drawn)
            for stage in STAGES[1:]:
                pipeline.run(stage)

    def _add_sampling(self, run: str, seconds: float, candidates: int) -> None:
        """Add to ``sampling.json``, which the runs of one matrix share, under a lock of its own: each
        run's writer lock does not keep two processes running different cells from losing an update."""
        if not candidates:
            return
        path = self.root / "sampling.json"
        with FileLock(self.root / ".sampling.lock"):
            record = read_json(path) if path.exists() else {}
            mine = record.get(run, {"seconds": 0.0, "candidates": 0})
            record[run] = {"seconds": mine["seconds"] + seconds, "candidates": mine["candidates"] + candidates}
            write_json_atomic(path, record)

    def rows(self) -> list[dict]:
        """One record per finished cell (task x model x prompting)."""
        sampling_path = self.root / "sampling.json"
        sampling = read_json(sampling_path) if sampling_path.exists() else {}
        rows = []
        for task in self.config.tasks:
            name = self.task_names[task.path]
            for model in self.config.models:
                folder = RunFolder(self.run_folder(task, model))
                if not folder.report.exists():
                    continue
                speed = sampling.get(folder.root.name)
                for policy in RunConfig.load(folder.config).policies:
                    rows.append({"task": name, "model": model, "prompting": policy,
                                 **cell_summary(folder, name, policy),
                                 "samples_per_second": speed["candidates"] / speed["seconds"] if speed else None})
        return rows

    def write_summary(self) -> Table:
        rows = self.rows()
        write_json_atomic(self.root / "summary.json", rows)
        table = summary_table(rows)
        figure = matrix_figure(self, rows)
        text = f"# TTP matrix: {self.root}\n\n{table.title}\n\n{table.to_markdown()}\n![cells]({figure})\n"
        write_bytes_atomic(self.root / "summary.md", text.encode("utf-8"))
        return table


def _candidates(folder: RunFolder, pool_size: int) -> int:
    """Candidates in the run's pool files so far."""
    return sum(len(r["texts"]) for path in folder.root.glob("*/*/pools.jsonl")
               for r in read_pools(path, pool_size, warn=False))


def candidate_profile(candidates: Path, max_tokens: int) -> dict:
    """What a cell's candidates look like, where long outputs differ from short ones: their mean
    tokens and the shares that reach the token cap, are empty, and score zero."""
    import pandas as pd

    table = pd.read_parquet(candidates, columns=["text", "n_tokens", PRIMARY])
    return {"tokens": float(table["n_tokens"].mean()), "at_cap": float((table["n_tokens"] >= max_tokens).mean()),
            "empty": float((table["text"] == "").mean()), "zero_utility": float((table[PRIMARY] == 0).mean())}


def cell_summary(folder: RunFolder, task: str, policy: str) -> dict:
    """The figures of one cell, read from its run folder."""
    curves = read_curves(folder, task, policy)[PRIMARY]
    oracle, rand = Curve.from_json(curves["oracle"]), Curve.from_json(curves["random"])
    n = min(SUMMARY_N, int(oracle.n[-1]))
    log_fit = next(f for f in curves["ceiling_fits"] if f["form"] == LOG_FORM)
    ev = read_reward_eval(folder, task, policy)
    diagnoses = read_diagnoses(folder, task, policy)
    shares = {name: sel["oracle_gain_share"].get(str(n)) for name, sel in ev["selectors"].items()}
    trained = [name for name in shares if name in diagnoses and shares[name] and _standard(Selector.parse(name))]
    best = max(trained, key=lambda name: shares[name][0])
    law, within, error = best_law(diagnoses)

    def failure(name: str) -> dict:
        d = diagnoses[name]
        return {"c": d.collapse_rate, "h": d.hacked_share_informative, "h_by_chance": d.hacked_share_expected_by_chance}

    return {"queries": curves["queries"], "test_queries": ev["queries"], "test_users": ev["users"], "n": n,
            "mu_bar": rand.at(1)[0], "oracle": list(oracle.at(n)), "log_slope": log_fit["b"],
            "best_rm": best, "best_rm_share": shares[best], "best_rm_failure": failure(best),
            "probabilistic_share": shares.get(PROBABILISTIC),
            "probabilistic_failure": failure(PROBABILISTIC) if PROBABILISTIC in diagnoses else None,
            "best_law": law, "best_law_error": error, "law_fits": within,
            "selectors": len([d for d in diagnoses if d != "random"]),
            "candidates": candidate_profile(folder.candidates(task, policy),
                                            RunConfig.load(folder.config).sampling.max_tokens)}


def _standard(selector: Selector) -> bool:
    """A standard RM: a point-score head, picking by its score alone (no uncertainty rule)."""
    return head_of(selector.model) in STANDARD_HEADS and selector.rule in (None, "mean")


def best_law(diagnoses: dict) -> tuple[str, int, float]:
    """The per-query law that fits the most selectors within ``WITHIN_SE`` paired standard errors
    (ties: the smaller median error), with that count and its median error, a share of the oracle gain."""
    judged = [d for name, d in diagnoses.items() if name != "random"]
    scored = []
    for law in PER_QUERY_LAWS:
        if not all(law in d.law_errors for d in judged):
            continue
        fits = sum(e is not None and e <= WITHIN_SE for e in (d.error_in_se(law) for d in judged))
        error = float(np.median([d.law_errors[law]["max_share_of_oracle_gain"] for d in judged]))
        scored.append((-fits, error, law))
    fits, error, law = min(scored)
    return law, -fits, error


def _share(values) -> str:
    return "-" if not values else f"{values[0]:.2f} [{values[1]:.2f}, {values[2]:.2f}]"


def _profile(candidates: dict) -> str:
    return (f"{candidates['tokens']:.0f} ({candidates['at_cap']:.0%} / {candidates['empty']:.0%} / "
            f"{candidates['zero_utility']:.0%})")


def summary_table(rows: list[dict]) -> Table:
    def failure(f) -> str:
        return "-" if not f else f"{f['c']:.2f} / {f['h']:.2f} ({f['h_by_chance']:.2f})"

    n = rows[0]["n"] if rows else SUMMARY_N
    body = [[r["task"], r["model"], r["prompting"], f"{r['queries']} ({r['test_queries']})", f"{r['mu_bar']:.3f}",
             f"{r['oracle'][0]:.3f} [{r['oracle'][1]:.3f}, {r['oracle'][2]:.3f}]", f"{r['log_slope']:.4f}",
             f"{_share(r['best_rm_share'])} ({r['best_rm']})", failure(r["best_rm_failure"]),
             _share(r["probabilistic_share"]), failure(r["probabilistic_failure"]),
             f"{LAW_LABELS.get(r['best_law'], r['best_law'])}: {r['best_law_error']:.1%}, {r['law_fits']} / "
             f"{r['selectors']}",
             _profile(r["candidates"]),
             "-" if r["samples_per_second"] is None else f"{r['samples_per_second']:.1f}"] for r in rows]
    return Table(f"One row per cell: ROUGE-L of one sample (μ̄), the oracle at N = {n} and the log fit's "
                 f"slope (all queries); the share of the oracle gain at N = {n} (95% CI over test users) of the best "
                 f"standard RM on the test users and of the probabilistic RM; c (collapse) and h (hacked share of "
                 f"pools with spread, by chance in brackets); the per-query law fitting the most selectors within "
                 f"{WITHIN_SE:.0f} paired SE (its median worst error as a share of the oracle gain, target "
                 f"{LAW_TOLERANCE:.0%}); the candidates' mean tokens, and their shares at the token cap, empty "
                 f"and of ROUGE-L 0; candidates sampled per second",
                 ["task", "model", "prompting", "queries (test)", "μ̄ (N=1)", f"oracle N={n}", "log slope",
                  "best standard RM: gain share", "its c / h (chance)", "probabilistic: gain share",
                  "its c / h (chance)", "best law: error, fits", "tokens (cap / empty / zero)", "samples/s"], body)


def matrix_figure(matrix: Matrix, rows: list[dict]) -> str:
    """Each cell's oracle, random and best standard RM curves on its test users, one panel per
    cell; the file's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ttp.runs.report import band, save_figure

    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(3.2 * max(len(rows), 1), 3.0), squeeze=False)
    for ax, row in zip(axes[0], rows):
        task = next(t for t in matrix.config.tasks if matrix.task_names[t.path] == row["task"])
        ev = read_reward_eval(RunFolder(matrix.run_folder(task, row["model"])), row["task"], row["prompting"])
        band(ax, Curve.from_json(ev["oracle"]), "oracle", color="black")
        band(ax, Curve.from_json(ev["selectors"][row["best_rm"]]["curve"]), "best standard RM", color="tab:blue")
        band(ax, Curve.from_json(ev["selectors"]["random"]["curve"]), "random", color="tab:gray")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{row['task']} / {row['model']} / {row['prompting']}\nRM: {row['best_rm']}", fontsize=8)
        ax.set_xlabel("N")
    axes[0][0].set_ylabel(f"{PRIMARY} on test users")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, matrix.root / "matrix.png")
