"""The ``ttp`` command: one subcommand per stage of the data flow, ``run`` for all of them on
any LaMP-layout task, ``demo`` for all of them on the embedded default tasks, and ``generate``
for one personalized output.  Errors print as one line, ``ttp: error: <message>``; ``--debug``
(or ``TTP_DEBUG=1``) shows the traceback instead."""
from __future__ import annotations

import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import click
import typer
from rich.console import Console
from rich.table import Table as RichTable

import ttp
from ttp.options import field_option, model_options
from ttp.policy import MAX_POOL_SIZE, SamplingParams
from ttp.policy.registry import EngineConfig
from ttp.runs import additions
from ttp.runs.config import RunConfig, TaskSpec
from ttp.runs.folder import RunFolder
from ttp.runs.matrix import MatrixConfig
from ttp.runs.pipeline import AFTER_SCORES, STAGES, Pipeline, run_stages
from ttp.runs.stages import BY_NAME
from ttp.runs.tables import Table, stage_tables
from ttp.serve.config import ServeConfig
from ttp.tuning import TuneConfig
from ttp.tuning.lora import LoraConfig

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console(width=200)
WRAPPED_TEXT = 40   # a column whose values run longer than this wraps them


# the engine's options, one spelling for `run`, `generate` and `serve` (ttp.policy.registry.EngineConfig)
SERVER_URL = typer.Option(None, "--server-url", "--upstream-url",
                          help="sample from this OpenAI-compatible server, e.g. http://gpu-box:8000 "
                               "(run: with --backend openai; generate, serve: instead of the run's engine)")
SERVER_MODEL = typer.Option(None, "--server-model", "--upstream-model", help="the server's model name")
SERVER_CONCURRENCY = typer.Option(8, "--server-concurrency", "--upstream-concurrency", min=1, max=256,
                                  help="requests in flight to the server")
# the API key of a scoring endpoint (`ttp scores --from-url`, `ttp serve --reward-url`)
REWARD_KEY = typer.Option(None, envvar="TTP_REWARD_KEY", help="API key of the scoring endpoint (or TTP_REWARD_KEY)")


def _print_version(wanted: bool) -> None:
    if wanted:
        console.print(f"ttp {ttp.__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print ttp's version and exit."),
             debug: bool = typer.Option(False, "--debug", help="Show an error's traceback instead of one line "
                                        "(anywhere on the command line, or TTP_DEBUG=1).")) -> None:
    """Test-time personalization: Best-of-N with personalized reward models."""


def render(table: Table) -> None:
    rows = [[cell.replace("**", "") for cell in row] for row in table.rows]
    out = RichTable(title=table.title, caption=table.caption or None)
    for i, column in enumerate(table.columns):
        # numbers are never cut short: a header longer than its values wraps at their width;
        # only a column of long text (a description) wraps its values
        value_width = max((len(row[i]) for row in rows), default=0)
        width = max([min(value_width, WRAPPED_TEXT)] + [len(word) for word in column.split()])
        out.add_column(textwrap.fill(column, width), no_wrap=value_width <= WRAPPED_TEXT, overflow="fold")
    for row in rows:
        out.add_row(*row)
    console.print(out)


def _listed(values) -> list[str]:
    """A list option given as a comma list, repeated, or both: ``--family a,b --family c``."""
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


ALL = "0 or omitted: all"
PROMPTING_HELP = "the prompting: personalized (the user's profile items in the prompt) or plain"
TASK_NAME_HELP = "the task's name in the run (`ttp run` prints it; a LaMP task's outputs file names it)"


def _check_server(url: str | None, model: str | None, concurrency: int) -> None:
    if url and not model:
        raise typer.BadParameter("--server-url needs --server-model, the server's model name")


def _run_stages(config: RunConfig | None, root: Path, stages, first=None) -> Pipeline:
    """``run_stages``, printing each stage's tables as it finishes."""
    def show(pipeline: Pipeline, stage: str, result) -> None:
        tasks = [t.name for t in pipeline.tasks]
        for table in stage_tables(pipeline.folder, stage, tasks, list(pipeline.config.policies)):
            render(table)
        if stage == "report":
            console.print(f"report: {result}")

    return run_stages(config, root, stages, first, before_stage=lambda stage: console.rule(f"[bold]{stage}"),
                      after_stage=show)


@app.command()
def prepare() -> None:
    """Fetch the mail corpus (npm) and derive the embedded default tasks into the cache, and the
    pep-titles and pep-abstracts tasks from the PEP records shipped with ttp."""
    from ttp.tasks.data import load_task
    from ttp.tasks.embedded import embedded_task_dirs
    from ttp.tasks.peps import pep_task_dirs

    for name, path in {**embedded_task_dirs(), **pep_task_dirs()}.items():
        task = load_task(path)
        console.print(f"{name}: {len(task.queries)} queries, {len(task.users)} users -> {path}")


RM_MODEL_HELP = ("the lm reward-model family's language model: a model folder, a `ttp tune` folder or a GGUF file "
                 "(default: the embedded Gemma 3 270M)")


def _rm_model(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.exists():
        raise typer.BadParameter(f"--rm-model {path}: no such folder or file")
    return str(path.resolve())


@app.command()
@model_options(EngineConfig, "engine")
@model_options(SamplingParams, "sampling", exclude=("seed", "stop"))
def run(
    ctx: typer.Context,
    engine: EngineConfig,
    sampling: SamplingParams,
    task: Optional[List[Path]] = typer.Option(None, help="task folder(s) in the LaMP layout (questions.json, "
                                              "outputs.json); without it, the run in --out goes on with its "
                                              "saved configuration"),
    out: Path = typer.Option(Path("runs/latest"), help="run folder"),
    max_queries_per_user: Optional[int] = typer.Option(None, min=0, help=f"seeded subset: queries per user ({ALL})"),
    max_users: Optional[int] = typer.Option(None, min=0, help=f"seeded subset: number of users ({ALL})"),
    seed: int = field_option(RunConfig, "seed"),
    split: Tuple[float, float, float] = field_option(RunConfig, "split"),
    convention: str = field_option(RunConfig, "convention"),
    family: List[str] = typer.Option(["features"], help="reward-model families to train (comma list or "
                                     "repeated): features, hidden_state, cross_encoder, lm"),
    rm_model: Optional[Path] = typer.Option(None, help=RM_MODEL_HELP),
    stages: List[str] = typer.Option(list(STAGES), help="stages to run, in order (comma list or repeated)"),
) -> None:
    """Run the stages on any task; a rerun on the same folder, or `ttp run --out RUN` alone, resumes where
    it stopped."""
    if not task:
        _go_on(ctx, out, _listed(stages))
        return
    stages = _listed(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if engine.model_path:
        engine = engine.model_copy(update={"model_path": str(Path(engine.model_path).resolve())})
    config = RunConfig(
        tasks=tuple(TaskSpec(path=str(t.resolve()), max_queries_per_user=max_queries_per_user or None,
                             max_users=max_users or None) for t in task),
        sampling=sampling.with_seed(seed), split=split, seed=seed, convention=convention, families=_families(family),
        engine=engine, rm_model=_rm_model(rm_model),
    )
    _run_stages(config, out, stages)


def _go_on(ctx: typer.Context, out: Path, stages: list[str]) -> None:
    """``ttp run --out RUN`` without ``--task``: the run in RUN goes on with its saved
    configuration, so an option that would change it is refused rather than ignored."""
    # by name: typer may carry its own copy of click's ParameterSource
    changed = [param.opts[0] for param in ctx.command.params if param.name not in ("out", "stages")
               and getattr(ctx.get_parameter_source(param.name), "name", None) == "COMMANDLINE"]
    if changed:
        raise typer.BadParameter(f"{changed[0]}: without --task the run in {out} goes on with its saved "
                                 f"configuration; give --task to start a run, or another --out")
    _run_stages(None, out, stages)      # a folder with no run stops with a line that says so


def _families(names) -> tuple[str, ...]:
    from ttp.rewards.families import check_families

    try:
        return check_families(tuple(dict.fromkeys(["features", *_listed(names)])))
    except ValueError as err:
        raise typer.BadParameter(f"--family: {err}") from None


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder"),
    pool_size: int = typer.Option(8, min=1, max=MAX_POOL_SIZE, help="candidates per query"),
    max_users: int = typer.Option(12, min=3, help="users per task"),
    max_queries_per_user: int = typer.Option(4, min=0, help="queries per user (0: all)"),
) -> None:
    """Everything, end to end, on the two embedded mail tasks with modest sizes."""
    from ttp.tasks.embedded import embedded_task_dirs

    config = RunConfig(
        tasks=tuple(TaskSpec(path=str(p), max_queries_per_user=max_queries_per_user or None, max_users=max_users)
                    for p in embedded_task_dirs().values()),
        sampling=SamplingParams(n=pool_size, max_tokens=24),
    )
    _run_stages(config, out, STAGES)


SELECTOR_HELP = ("the reward model and rule that pick, e.g. ensemble/mean or cross_encoder.probabilistic/mean "
                 "(default: the run's controller_selector)")


@app.command()
def generate(
    run_folder: Path = typer.Argument(..., help="a run folder with trained reward models"),
    task_name: str = typer.Option(..., help=TASK_NAME_HELP),
    budget: int = typer.Option(8, min=1, max=MAX_POOL_SIZE, help="most samples to spend"),
    query_id: Optional[str] = typer.Option(None, help="a query of the task (its user and profile are used)"),
    user: Optional[str] = typer.Option(None, help="or: a user of the task ..."),
    text: Optional[str] = typer.Option(None, help="... and a new input for that user"),
    prompting: str = typer.Option("personalized", help=PROMPTING_HELP),
    min_gain: float = typer.Option(1e-3, min=0, help="stop when one more sample is predicted to gain less"),
    rule: Optional[str] = typer.Option(None, help="stopping rule: uniform, law or expected_improvement "
                                       "(default: the one the allocate stage chose on validation users)"),
    selector: Optional[str] = typer.Option(None, help=SELECTOR_HELP),
    server_url: Optional[str] = SERVER_URL,
    server_model: Optional[str] = SERVER_MODEL,
    server_concurrency: int = SERVER_CONCURRENCY,
) -> None:
    """Personalize one output at test time: sample adaptively, pick with the reward model."""
    from ttp.personalize import Personalizer

    _check_server(server_url, server_model, server_concurrency)
    personalizer = Personalizer.from_run(run_folder, task_name, prompting, selector=selector, server_url=server_url,
                                         server_model=server_model, server_concurrency=server_concurrency)
    if query_id is not None:
        queries = personalizer.task.by_id()
        if query_id not in queries:
            raise KeyError(f"query {query_id!r} is not in task {task_name}")
        query = queries[query_id]
    elif user is not None and text is not None:
        query = personalizer.query_for(user, text)
    else:
        raise typer.BadParameter("give --query-id, or --user and --text")
    decision = personalizer.generate(query, budget, min_gain, rule=rule).decision
    table = RichTable(title="ttp generate", show_header=False)
    for key, value in (("output", decision.text), ("selection score", f"{decision.score:.4f}"),
                       ("predicted utility", f"{decision.mean:.4f} ± {decision.sd:.4f}"),
                       ("samples spent", f"{decision.samples} of {budget} ({rule or personalizer.rule} rule)"),
                       ("stopped because", decision.stopped_because)):
        table.add_row(key, value)
    console.print(table)


@app.command()
@model_options(ServeConfig, "settings")
def serve(
    settings: ServeConfig,
    run_folder: Path = typer.Argument(..., help="a run folder with trained reward models"),
    task_name: str = typer.Option(..., help=TASK_NAME_HELP + "; its reward model and layout are served"),
    prompting: str = typer.Option("personalized", help=PROMPTING_HELP + "; the reward model trained on its "
                                  "pools picks"),
    db: Optional[str] = typer.Option(None, help="profile store: a SQLite file or a postgresql:// URL (several "
                                     "workers may share one); default RUN/profiles.sqlite, filled from the "
                                     "task on first start"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
    server_url: Optional[str] = SERVER_URL,
    server_model: Optional[str] = SERVER_MODEL,
    server_concurrency: int = SERVER_CONCURRENCY,
    selector: Optional[str] = typer.Option(None, help=SELECTOR_HELP),
    api_keys: Optional[Path] = typer.Option(None, envvar="TTP_API_KEYS", help="key file (hashed keys and the "
                                            "users each may act for; `ttp keys add` makes one); without it, no "
                                            "key is asked for"),
    insecure_no_auth: bool = typer.Option(False, help="serve a non-loopback --host without keys: anyone who "
                                          "reaches the port may read and write every user's profile"),
    reward_url: Optional[str] = typer.Option(None, help="pick with the reward model behind this URL's "
                                             "POST /v1/ttp/score (another `ttp serve`), named by --selector "
                                             "as `ttp scores --from-url` stored it"),
    reward_key: Optional[str] = REWARD_KEY,
) -> None:
    """Serve personalized Best-of-N behind an OpenAI-compatible API (completions, chat, models)."""
    import uvicorn

    from ttp.personalize import Personalizer
    from ttp.rewards.remote import RemoteScorer
    from ttp.serve.app import Server, create_app
    from ttp.serve.auth import KeyFile
    from ttp.serve.store import ProfileStore

    _check_server(server_url, server_model, server_concurrency)
    if api_keys is None and not insecure_no_auth and not _loopback(host):
        raise typer.BadParameter(f"--host {host} is reachable from other machines and no --api-keys is given; "
                                 f"make keys with `ttp keys add`, or pass --insecure-no-auth to serve every "
                                 f"user's profile to anyone who reaches the port")
    keys = KeyFile(api_keys) if api_keys else None
    reward = RemoteScorer(reward_url, reward_key) if reward_url else None
    personalizer = Personalizer.from_run(run_folder, task_name, prompting, selector=selector, server_url=server_url,
                                         server_model=server_model, server_concurrency=server_concurrency,
                                         reward=reward)
    store = ProfileStore(db or run_folder / "profiles.sqlite")
    if not store.imported(task_name):     # once: a user erased since is not brought back
        console.print(f"profile store {store}: {store.import_task(personalizer.task)} items imported "
                      f"from {task_name}")
    console.print(f"serving {settings.model_name} ({task_name} / {prompting}, {personalizer.backend.name}) on "
                  f"http://{host}:{port}/v1"
                  + (f", API keys from {api_keys} (followed while serving)" if keys else ", no API keys"))
    uvicorn.run(create_app(Server(personalizer, store, settings, keys)), host=host, port=port, log_level="warning")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


keys_app = typer.Typer(help="API keys of `ttp serve`: each with the users it may act for.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _expiry(text: Optional[str]) -> Optional[float]:
    from ttp.serve.auth import parse_expiry

    try:
        return None if text is None else parse_expiry(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


EXPIRES = typer.Option(None, help="when the key stops working: a duration from now (30d, 12h, 90m, 2w) or an "
                       "ISO date (UTC unless a zone is given); default never")


@keys_app.command("add")
def keys_add(
    key_file: Path = typer.Argument(..., help="the key file (created if missing, mode 600)"),
    name: str = typer.Option(..., help="the key's name, shown in errors and stored beside what it writes "
                             "(never the key); never reused"),
    users: List[str] = typer.Option(..., help="user ids or shell patterns it may act for (comma list, or "
                                    "repeated); '*' for every user (an application key)"),
    expires: Optional[str] = EXPIRES,
) -> None:
    """Make a random key, store its SHA-256, scope and dates, and print the key once."""
    from ttp.serve.auth import add_key

    scope = _listed(users)
    key = add_key(key_file, name, scope, _expiry(expires))
    console.print(f"{key_file}: key {name!r} for {', '.join(scope)} added; it is shown only now:")
    print(key)


@keys_app.command("list")
def keys_list(key_file: Path = typer.Argument(..., help="the key file")) -> None:
    """Every key's name, scope, dates and state (active, expired, revoked); never the keys."""
    import time
    from datetime import datetime, timezone

    from ttp.serve.auth import list_keys

    def when(t):
        return "" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    table = RichTable("name", "users", "created", "expires", "state")
    now = time.time()
    for key in list_keys(key_file):
        table.add_row(key.name, ", ".join(key.users), when(key.created), when(key.expires),
                      key.state(now) + (f" {when(key.revoked)}" if key.revoked else ""))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_file: Path = typer.Argument(..., help="the key file"),
    name: str = typer.Argument(..., help="the key's name"),
) -> None:
    """Revoke a key: a running `ttp serve` following the file refuses it from its next request."""
    from ttp.serve.auth import revoke_key

    revoke_key(key_file, name)
    console.print(f"{key_file}: key {name!r} revoked; what it wrote stays until "
                  f"`ttp profiles delete --written-by {name} --db DB`")


@keys_app.command("rotate")
def keys_rotate(
    key_file: Path = typer.Argument(..., help="the key file"),
    name: str = typer.Argument(..., help="the key's name"),
    expires: Optional[str] = EXPIRES,
) -> None:
    """Give a key a new secret (same name and scope) and print it once; the old one is refused
    from a running server's next request."""
    from ttp.serve.auth import rotate_key

    key = rotate_key(key_file, name, _expiry(expires))
    console.print(f"{key_file}: key {name!r} rotated; the new key is shown only now:")
    print(key)


profiles = typer.Typer(help="The profile store of `ttp serve`.", no_args_is_help=True)
app.add_typer(profiles, name="profiles")


@profiles.command("import")
def profiles_import(
    source: Path = typer.Argument(..., help="a task folder in the LaMP layout, or a .jsonl file that "
                                  "`ttp profiles export` wrote"),
    db: str = typer.Option(..., help="the profile store to fill: a SQLite file or a postgresql:// URL"),
) -> None:
    """Load every user's profile items of a LaMP-layout task, or a store's export, into the
    profile store; what it holds already is kept once."""
    from ttp.serve.store import ProfileStore
    from ttp.tasks.data import load_task

    store = ProfileStore(db)
    if source.suffix == ".jsonl":
        console.print(f"{store}: {store.import_export(source)} profile items added from {source}")
        return
    task = load_task(source)
    added = store.import_task(task)
    console.print(f"{store}: {added} profile items of {len(task.users)} users added from {task.name}")


def _existing_store(db: str):
    from ttp.serve.store import ProfileStore, is_url

    if not is_url(db) and not Path(db).exists():
        raise typer.BadParameter(f"the store {db} does not exist")
    return ProfileStore(db)


@profiles.command("export")
def profiles_export(
    db: str = typer.Argument(..., help="the store to export: a SQLite file or a postgresql:// URL"),
    out: Path = typer.Argument(..., help="the JSON Lines file to write: one user a line, with their profile "
                               "items and feedback"),
    user: Optional[str] = typer.Option(None, help="only this user's data (what GET /v1/ttp/users/USER/profile "
                                       "answers)"),
) -> None:
    """Write every user's (or one user's) profile items and feedback to one JSON Lines file,
    which `ttp profiles import` reads into either store."""
    store = _existing_store(db)
    if user is not None and not store.has_user(user):
        raise typer.BadParameter(f"the store {store} holds no data of user {user!r}")
    console.print(f"{store} -> {out}: {store.export(out, user)} users")


@profiles.command("delete")
def profiles_delete(
    user: Optional[str] = typer.Argument(None, help="the user whose every row is erased (profile items, "
                                         "feedback, limit counters)"),
    db: str = typer.Option(..., help="the store: a SQLite file or a postgresql:// URL"),
    written_by: Optional[str] = typer.Option(None, help="instead of a user: erase every feedback entry (and "
                                             "the profile item it made) that this API key wrote"),
) -> None:
    """Erase one user's data, as DELETE /v1/ttp/users/USER does, or what one key wrote."""
    if (user is None) == (written_by is None):
        raise typer.BadParameter("give a USER or --written-by KEYNAME, one of them")
    store = _existing_store(db)
    if written_by is not None:
        erased = store.erase_written_by(written_by)
        console.print(f"{store}: {erased['feedback']} feedback entries and {erased['profile_items']} profile items "
                      f"written by key {written_by!r} erased")
        return
    erased = store.erase_user(user)
    if erased is None:
        raise typer.BadParameter(f"the store {store} holds no data of user {user!r}")
    console.print(f"{store}: user {user!r} erased ({erased['profile_items']} profile items, "
                  f"{erased['feedback']} feedback entries)")


@profiles.command("copy")
def profiles_copy(
    source: str = typer.Argument(..., help="the store to copy: a SQLite file or a postgresql:// URL"),
    target: str = typer.Argument(..., help="the store to fill, e.g. a postgresql:// URL"),
) -> None:
    """Copy every user, profile item and feedback entry from one store into another (SQLite to
    Postgres: the migration); what the target holds already is kept once, so a rerun adds nothing."""
    from ttp.serve.store import ProfileStore

    origin, destination = _existing_store(source), ProfileStore(target)
    console.print(f"{origin} -> {destination}: {origin.copy_to(destination)} profile items added")


@app.command()
def scores(
    run_folder: Path = typer.Argument(..., help="a run folder whose pools the scores are for"),
    file: Optional[Path] = typer.Argument(None, help="Parquet or JSONL: query_id, candidate, score[, sd], one row "
                                          "per candidate"),
    task_name: str = typer.Option(..., help=TASK_NAME_HELP),
    prompting: str = typer.Option("personalized", help=PROMPTING_HELP + "; the pools that were scored"),
    name: str = typer.Option(..., help="the selector's name in tables and figures"),
    from_url: Optional[str] = typer.Option(None, help="instead of a file: ask this URL's POST /v1/ttp/score "
                                           "(another `ttp serve`) for the held-out users' pools"),
    reward_key: Optional[str] = REWARD_KEY,
) -> None:
    """Bring scores from any other program (a file, or a scoring endpoint) into a run as a
    selector, then rerun the stages after sampling (rewards, diagnose, allocate, report) so it is
    judged like the trained ones."""
    if (file is None) == (from_url is None):
        raise typer.BadParameter("give a score FILE or --from-url URL, one of them")

    def store(pipeline: Pipeline) -> None:
        if from_url:
            from ttp.rewards.remote import RemoteScorer

            scorer = RemoteScorer(from_url, reward_key)
            try:
                table = additions.score_from_url(pipeline, scorer, task_name, prompting, name)
            finally:
                scorer.close()
        else:
            table = additions.import_scores(pipeline, file, task_name, prompting, name)
        console.print(f"{len(table)} scores of {table.query_id.nunique()} pools stored as selector {name!r}")

    _run_stages(None, run_folder, AFTER_SCORES, first=store)


@app.command()
def history(
    run_folder: Path = typer.Argument(..., help="a run folder with pools and utilities"),
    items_per_user: int = typer.Option(4, min=1, help="profile items of each user sampled as history queries"),
    pool_size: Optional[int] = typer.Option(None, min=1, max=MAX_POOL_SIZE, help="candidates per history pool "
                                            "(default: the run's pool size)"),
) -> None:
    """Sample pools for the users' own profile items (held-out users' included; none a held-out
    query's record), train the history family of reward models on them beside the training
    users' pools, then rerun rewards, diagnose, allocate and report so they are judged like the
    others.  Resumes where it stopped."""
    _run_stages(None, run_folder, ["sample", *AFTER_SCORES],
                first=lambda pipeline: additions.add_history(pipeline, items_per_user, pool_size))


@app.command("learning-curve")
def learning_curve(
    run_folder: Path = typer.Argument(..., help="a run folder with history pools (`ttp history`)"),
    items: List[str] = typer.Option(["0", "1", "2"], help="history items per user to refit on (comma list or "
                                    "repeated; 0: the training users' pools alone)"),
) -> None:
    """Refit the history reward models on the first k history items of every user, for each k,
    judge each on the test users' pools, and print the share of the oracle gain by k, with
    learning_curve.png in the run's figures.  Resumes at the first k not yet fitted."""
    from ttp.runs.learning_curve import learning_curve as curve
    from ttp.runs.learning_curve import learning_curve_figure
    from ttp.runs.tables import learning_curve_table

    try:
        counts = [int(item) for item in _listed(items)]
    except ValueError:
        raise typer.BadParameter(f"--items takes whole numbers, got {items}") from None
    folder = RunFolder.existing(run_folder)
    with folder.lock():
        pipeline = Pipeline.resume(run_folder)
        try:
            results = curve(pipeline, counts, on_point=lambda task, policy, k: console.print(
                f"fitting the history RMs on {k} items per user ({task} / {policy})"))
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    for (task, policy), result in results.items():
        render(learning_curve_table(task, policy, result))
    console.print(f"figure: {folder.figures / learning_curve_figure(results, folder.figures / 'learning_curve.png')}")


@app.command("zero-shot")
def zero_shot(
    run_folder: Path = typer.Argument(..., help="a run folder with pools and utilities"),
    scorer: Optional[List[str]] = typer.Option(None, help="scorers to compute (comma list or repeated; default: "
                                                          "every one the run does not have yet)"),
) -> None:
    """Score the held-out users' pools with the untrained scorers (likelihood, pmi and judge on the
    run's own model; profile_similarity; mbr and mbr_profile, from ROUGE alone), then rerun
    rewards, diagnose, allocate and report so they are judged like the trained reward models."""
    from ttp.rewards.zero_shot import ZERO_SHOT

    scorers = tuple(_listed(scorer))
    for name in scorers:
        if name not in ZERO_SHOT:
            raise typer.BadParameter(f"--scorer {name!r}: choose from {', '.join(ZERO_SHOT)}")
    _run_stages(None, run_folder, AFTER_SCORES, first=lambda pipeline: additions.zero_shot(pipeline, scorers))


@app.command()
def compare(
    run_folder: Path = typer.Argument(..., help="a run folder with pools and utilities"),
    family: Optional[List[str]] = typer.Option(None, help="families to add (comma list or repeated; default: "
                                                          "every registered family the run does not train yet; "
                                                          "the history families come with `ttp history`)"),
    rm_model: Optional[Path] = typer.Option(None, help=RM_MODEL_HELP),
) -> None:
    """Train the reward-model families on the run's training users (each with the pointwise,
    Bradley-Terry and probabilistic heads), judge every family x head x rule on the same held-out
    users, and print the comparison.  Trained models and hidden states stay in the run folder, so
    a rerun only scores."""
    from ttp.runs.results import read_diagnoses, read_reward_eval
    from ttp.runs.tables import comparison_table

    families = tuple(_listed(family))
    if families:
        _families(families)
    backbone = _rm_model(rm_model)
    pipeline = _run_stages(None, run_folder, AFTER_SCORES,
                           first=lambda p: additions.add_families(p, families, backbone))
    console.rule("[bold]families compared")
    for task in pipeline.tasks:
        for policy in pipeline.config.policies:
            render(comparison_table(task.name, policy, read_reward_eval(pipeline.folder, task.name, policy),
                                    read_diagnoses(pipeline.folder, task.name, policy)))


@app.command()
@model_options(TuneConfig, "settings", exclude=("base_model", "lora"))
@model_options(LoraConfig, "lora")
def tune(
    settings: TuneConfig,
    lora: LoraConfig,
    task: Optional[Path] = typer.Option(None, help="task folder (LaMP / LongLaMP layout) whose users' writing is "
                                        "learnt"),
    old_task: Optional[Path] = typer.Argument(None, hidden=True, help="the task folder as a positional argument "
                                              "(the old spelling of --task)"),
    out: Path = typer.Option(..., help="model folder to write; a rerun resumes a tune left there"),
    base_model: Optional[Path] = typer.Option(None, help="GGUF file or model folder to tune (default: the "
                                              "embedded Gemma 3 270M); a folder gives a folder that transformers "
                                              "and vLLM sample"),
) -> None:
    """Fine-tune the policy model (LoRA, merged into a GGUF, or into a model folder when the base is one) on
    the task's own examples of its users' writing: every user's profile items and the training users' queries.
    `ttp run --model OUT` samples a GGUF tune, `ttp run --backend transformers --model-path OUT` a folder tune."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ttp.tasks.data import load_task
    from ttp.tuning import tune as tune_model

    if old_task is not None:
        warnings.warn(f"`ttp tune {old_task}` is spelled `ttp tune --task {old_task}` now; the positional "
                      f"task goes in the next release")
    task = task or old_task
    if task is None:
        raise typer.BadParameter("give the task folder: --task PATH")
    config = settings.changed(base_model=str(base_model.resolve()) if base_model else None, lora=lora)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task(f"tuning on {task.name}", total=None, loss="-")
        result = tune_model(load_task(task), out, config,
                            on_step=lambda step, steps, loss: bar.update(job, completed=step, total=steps,
                                                                         loss=f"{loss:.3f}"))
    record = result.record
    console.print(f"{result.model}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min; validation "
                  f"loss {record['validation_loss']['before']:.3f} -> {record['validation_loss']['after']:.3f} "
                  f"nats/token; model card {out / 'README.md'}")


@app.command()
def matrix(
    out: Path = typer.Option(Path("runs/matrix"), help="matrix folder; a rerun resumes every part"),
    task: Optional[List[Path]] = typer.Option(None, help="task folders (repeatable; default: pep-titles and "
                                              "pep-abstracts)"),
    policy_models: List[str] = typer.Option(["base", "tuned"], help="policy models (comma list or repeated): base "
                                            "(the embedded Gemma) and tuned "
                                    "(ttp tune on each task)"),
    pool_size: int = field_option(MatrixConfig, "pool_size"),
    max_queries_per_user: Optional[int] = typer.Option(3, min=0, help="seeded subset of each user's queries (0: all)"),
    seed: int = field_option(MatrixConfig, "seed"),
    split: Tuple[float, float, float] = field_option(MatrixConfig, "split"),
) -> None:
    """Run every cell of tasks x policy models x promptings (personalized, plain) and print one summary
    row per cell: the ceiling, the best standard and the probabilistic RM, failures, the best law, speed."""
    from ttp.runs.matrix import Matrix, MatrixTask
    from ttp.tasks.peps import pep_task_dirs
    from ttp.tuning import TuneConfig

    paths = [p.resolve() for p in task] if task else list(pep_task_dirs().values())
    config = MatrixConfig(tasks=tuple(MatrixTask(path=str(p), max_queries_per_user=max_queries_per_user or None)
                                      for p in paths), models=tuple(_listed(policy_models)), pool_size=pool_size,
                          split=split, seed=seed, tune=TuneConfig(split=split, seed=seed))
    table = Matrix(config, out).run(on_cell=lambda label: console.rule(f"[bold]{label}"))
    render(table)
    console.print(f"summary: {out / 'summary.md'}")


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
def resume(run_folder: Path = typer.Argument(..., help="run folder made by `ttp run` or `ttp demo`")) -> None:
    """Continue a run from where it stopped, with its saved configuration (`ttp run --out RUN` does the
    same; this spelling goes in the next release)."""
    warnings.warn(f"`ttp resume {run_folder}` is spelled `ttp run --out {run_folder}` now; `resume` goes in the "
                  f"next release")
    _run_stages(None, run_folder, STAGES)


def _stage_command(stage: str):
    def command(run_folder: Path = typer.Argument(..., help="run folder made by `ttp run` or `ttp demo`")):
        _run_stages(None, run_folder, [stage])

    command.__doc__ = f"Run only the {stage} stage on an existing run folder ({BY_NAME[stage].summary})."
    return command


for _stage in STAGES:
    app.command(name=_stage)(_stage_command(_stage))


def _one_line(err: BaseException) -> str:
    from pydantic import ValidationError

    from ttp.typed import refusal

    text = str(err) or type(err).__name__
    if isinstance(err, ValidationError):
        where, why = refusal(err)
        text = f"{err.title} {where}: {why}" if where else f"{err.title}: {why}"
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return " ".join(text.split())


def _is_usage_error(err: BaseException) -> bool:
    """A bad command line (an option out of range, an unknown command): click's own exception,
    or the one of the click that typer vendors (typer >= 0.20), which is not a subclass of it."""
    return isinstance(err, click.ClickException) or (
        isinstance(err, typer.TyperException) and hasattr(err, "format_message") and hasattr(err, "exit_code"))


# options that meant another thing in these commands than in the rest: the old spelling is read
# for one release, with a warning
RENAMED = {"generate": {"--task": "--task-name", "--policy": "--prompting"},
           "serve": {"--task": "--task-name", "--policy": "--prompting"},
           "scores": {"--task": "--task-name", "--policy": "--prompting"},
           "matrix": {"--model": "--policy-models"}}


def _renamed(args: list[str]) -> list[str]:
    command = next((a for a in args if not a.startswith("-")), None)
    renames, spelled = RENAMED.get(command, {}), []
    for arg in args:
        old, equals, value = arg.partition("=")
        if old in renames:
            warnings.warn(f"`ttp {command} {old}` is spelled {renames[old]} now; {old} goes in the next release")
            arg = renames[old] + equals + value
        spelled.append(arg)
    return spelled


def main(argv: list[str] | None = None) -> int:
    """The console entry point: runs the app and turns any error into one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TTP_DEBUG") == "1" or "--debug" in args
    args = [a for a in args if a != "--debug"]
    warnings.formatwarning = lambda message, *_, **__: f"ttp: warning: {' '.join(str(message).split())}\n"
    # peft (tune, the lm reward model) asks transformers a deprecated name; nothing for a user to do
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    args = _renamed(args)
    try:
        app(args=args, prog_name="ttp", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        print("ttp: interrupted; finished work is saved, `ttp run --out RUN` continues", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary of the program: every error becomes one line
        if _is_usage_error(err):
            print(f"ttp: error: {' '.join(err.format_message().split())} (see `ttp --help`)", file=sys.stderr)
            return err.exit_code
        if debug:
            raise
        print(f"ttp: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
