"""TTP beside what its users would pick instead, on the same held-out queries, in one run:

* ``ttp``: ``ttp serve`` with the user (personalized prompt, the run's reward model and stopping rule);
* ``optillm bon``: optillm 0.4.0's ``bon`` over llama-cpp-python's server with the same Gemma
  model (``n`` chat samples at temperature 1, then the same model rates each one 0-10);
* ``log-prob best-of-N``: ``ttp serve`` without a user (the plain prompt, the candidate of highest
  mean token log-probability, as vLLM's removed ``best_of`` picked);
* ``personalized N = 1`` and ``plain N = 1``: ``ttp serve`` with a budget of one sample;
* ``mbr`` and ``mbr_profile``: the untrained picks among the same personalized samples (``ttp
  serve`` with the user and ``n = best_of = N``): the candidate of highest mean ROUGE-L against
  the rest of its pool, and against the user's own past outputs (``ttp.rewards.consensus``);
* ``oracle``: the same samples, the candidate of highest ROUGE-L against the gold, the ceiling of
  selecting among personalized samples.

    .venv/bin/python bench/vs_peers.py [RUN] [--budgets 4 8] [--queries 48] [--optillm-queries 16]

RUN is a run folder with trained reward models (by default runs/vs-peers, made on first use on
pep-titles: pools of 8, at most 5 queries per user, about 10 minutes on 2 cores).  Every arm is
asked through its HTTP API with the ``openai`` client, on loopback, one request at a time (the
embedded model serves one at a time), the same queries, budget, model, sampling settings
(temperature 1 for optillm, which sets its own) and max_tokens.  Prints per arm and budget:
ROUGE-L and ROUGE-1 with a bootstrap interval over users, the paired ROUGE-L difference to
``ttp`` at the same budget with its interval, p50/p99 latency, samples, model calls and
completion tokens per request, and errors.  optillm runs on the first ``--optillm-queries``
queries (its self-ratings generate up to 256 tokens each); its paired difference is over those.
Needs ``.venv-optillm`` (``make .venv-optillm/bin/python``)."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai
from _data import pep_titles_dir
from serve_load import start_server, up_or_exit

from ttp.analysis.bon import user_bootstrap
from ttp.local_servers import free_port
from ttp.rewards.consensus import mbr_scores, profile_agreement
from ttp.runs.config import RunConfig
from ttp.tasks.data import load_task
from ttp.tasks.utility import rouge

ROOT = Path(__file__).resolve().parents[1]
TTP = [sys.executable, "-m", "ttp.cli"]
OPTILLM_PYTHON = ROOT / ".venv-optillm" / "bin" / "python"


def ensure_run(run: Path, data: Path) -> None:
    if (run / "config.json").exists() and any(run.glob("*/personalized/online_rules.json")):
        return
    print(f"making the run folder {run} (pools of 8, at most 5 queries per user)", file=sys.stderr)
    subprocess.run([*TTP, "run", "--task", str(data), "--out", str(run), "--pool-size", "8",
                    "--max-queries-per-user", "5"], check=True, stdout=subprocess.DEVNULL)


def held_out_queries(run: Path, limit: int):
    """The test users' queries, one user after another in turn, so that a short list spans users."""
    config = RunConfig.load(run / "config.json")
    task = load_task(config.tasks[0].path, config.tasks[0].name, config.tasks[0].layout)
    test_users = json.loads((run / task.name / "split.json").read_text())["test"]
    by_user = [[q for q in task.queries if q.user == u] for u in test_users]
    spread = [qs[i] for i in range(max(map(len, by_user))) for qs in by_user if i < len(qs)]
    return config, task, spread[:limit]


class Arm:
    """One arm's answers: per query, its text, latency, samples, model calls, tokens, error."""

    def __init__(self, name: str, budget: int):
        self.name, self.budget, self.rows = name, budget, {}

    def add(self, query_id: str, text: str, latency: float, samples: int, calls: int, tokens: int,
            error: str | None = None) -> None:
        self.rows[query_id] = {"text": text, "latency": latency, "samples": samples, "calls": calls,
                               "tokens": tokens, "error": error}


def ask_ttp(client: openai.OpenAI, arm: Arm, queries, max_tokens: int, with_user: bool, pick=None) -> None:
    """``pick(texts, query)``: the index this arm chooses among all ``N`` samples; None: TTP's own choice."""
    for query in queries:
        extra = {"user": query.user} if with_user else {}
        start = time.perf_counter()
        try:
            if pick:
                r = client.completions.create(model="ttp", prompt=query.input, n=arm.budget, best_of=arm.budget,
                                              max_tokens=max_tokens, seed=1, **extra)
                texts = [c.text for c in r.choices]
                text = texts[pick(texts, query)]
            else:
                r = client.completions.create(model="ttp", prompt=query.input, max_tokens=max_tokens, seed=1,
                                              extra_body={"ttp": {"budget": arm.budget}}, **extra)
                text = r.choices[0].text
            meta = r.model_extra["ttp"]
            arm.add(query.id, text, time.perf_counter() - start, meta["samples"], 1, r.usage.completion_tokens)
        except openai.APIError as err:
            arm.add(query.id, "", time.perf_counter() - start, 0, 1, 0, f"{type(err).__name__}: {err}")


def ask_optillm(arms: list[Arm], queries, max_tokens: int, url: str) -> None:
    if not OPTILLM_PYTHON.exists():
        sys.exit("optillm's environment is missing: make .venv-optillm/bin/python")
    requests = [{"id": f"{q.id}|{arm.budget}", "n": arm.budget, "text": q.input} for arm in arms for q in queries]
    job = {"url": f"{url}/v1", "model": "gemma", "system_prompt": "", "max_tokens": max_tokens, "requests": requests}
    child = subprocess.run([str(OPTILLM_PYTHON), str(Path(__file__).with_name("_optillm_bon.py"))],
                           input=json.dumps(job), capture_output=True, text=True, check=True)
    by_budget = {arm.budget: arm for arm in arms}
    for line in child.stdout.splitlines():
        row = json.loads(line)
        query_id, budget = row["id"].rsplit("|", 1)
        by_budget[int(budget)].add(query_id, row["text"], row["latency"], row["n"], row["model_calls"],
                                   row["completion_tokens"], row["error"])


def start_llama_server(n_ctx: int) -> tuple[subprocess.Popen, str]:
    from ttp.policy.llama_cpp import default_model_path

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
                             "--model_alias", "gemma", "--chat_format", "gemma", "--n_ctx", str(n_ctx),
                             "--port", str(port), "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    return up_or_exit(proc, url, "/v1/models"), url


def table(arms: list[Arm], queries, convention: str, n_boot: int = 1000) -> None:
    golds = {q.id: q for q in queries}
    print(f"{'arm':<22}{'N':>3}{'queries':>8}  {'ROUGE-L [95% CI]':<22}{'ROUGE-1 [95% CI]':<22}"
          f"{'ROUGE-L - ttp [95% CI]':<26}{'p50 s':>7}{'p99 s':>7}{'samples':>8}{'calls':>6}{'tokens':>7}{'errors':>7}")
    reference = {arm.budget: arm for arm in arms if arm.name == "ttp"}
    for arm in arms:
        ids = [q for q in golds if q in arm.rows]
        users = np.array([golds[q].user for q in ids])
        scores = {q: rouge([arm.rows[q]["text"]], golds[q].gold, convention) for q in ids}
        utility = np.array([[scores[q]["rougeL"][0], scores[q]["rouge1"][0]] for q in ids])
        band = user_bootstrap(utility, users, n_boot)
        ref = reference.get(arm.budget) or reference[max(reference)]
        ref_l = np.array([rouge([ref.rows[q]["text"]], golds[q].gold, convention)["rougeL"][0] for q in ids])
        diff = user_bootstrap((utility[:, 0] - ref_l)[:, None], users, n_boot)
        rows = [arm.rows[q] for q in ids]
        latency = np.array([r["latency"] for r in rows])
        print(f"{arm.name:<22}{arm.budget:>3}{len(ids):>8}  "
              f"{band.mean[0]:.3f} [{band.low[0]:.3f}, {band.high[0]:.3f}]  "
              f"{band.mean[1]:.3f} [{band.low[1]:.3f}, {band.high[1]:.3f}]  "
              + (f"{diff.mean[0]:+.3f} [{diff.low[0]:+.3f}, {diff.high[0]:+.3f}]    " if arm is not ref else
                 f"{'(reference)':<26}")
              + f"{np.percentile(latency, 50):>7.2f}{np.percentile(latency, 99):>7.2f}"
              f"{np.mean([r['samples'] for r in rows]):>8.2f}{np.mean([r['calls'] for r in rows]):>6.1f}"
              f"{np.mean([r['tokens'] for r in rows]):>7.1f}{sum(r['error'] is not None for r in rows):>7}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=ROOT / "runs" / "vs-peers")
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder, to make RUN where missing")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--optillm-queries", type=int, default=16)
    args = parser.parse_args()
    if not (args.run / "config.json").exists():
        ensure_run(args.run, pep_titles_dir(args.data))
    config, task, queries = held_out_queries(args.run, args.queries)
    max_tokens = config.sampling.max_tokens
    print(f"{task.name}: {len(queries)} queries of {len({q.user for q in queries})} held-out users; "
          f"budgets {args.budgets}; max_tokens {max_tokens}; temperature {config.sampling.temperature}")

    def oracle(texts, query):
        return int(np.argmax(rouge(texts, query.gold, config.convention)["rougeL"]))

    def mbr(texts, query):
        return int(np.argmax(mbr_scores(texts, config.convention)))

    def mbr_profile(texts, query):
        return int(np.argmax(profile_agreement(texts, query, config.convention)))

    arms = []
    server, url = start_server(args.run, task.name, str(args.run / "vs-peers-profiles.sqlite"))
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        for name, budget, with_user, pick in [("personalized N = 1", 1, True, None), ("plain N = 1", 1, False, None),
                                              *[(kind, n, user, pick) for n in args.budgets for kind, user, pick in
                                                (("ttp", True, None), ("log-prob best-of-N", False, None),
                                                 ("mbr", True, mbr), ("mbr_profile", True, mbr_profile),
                                                 ("oracle", True, oracle))]]:
            arm = Arm(name, budget)
            ask_ttp(client, arm, queries, max_tokens, with_user, pick)
            arms.append(arm)
            print(f"  {name}, budget {budget}: done", file=sys.stderr)
    finally:
        server.kill()
        server.wait()
    llama, llama_url = start_llama_server(config.engine.n_ctx)
    try:
        optillm = [Arm("optillm bon", n) for n in args.budgets]
        ask_optillm(optillm, queries[:args.optillm_queries], max_tokens, llama_url)
        arms.extend(optillm)
    finally:
        llama.kill()
        llama.wait()
    order = ["ttp", "optillm bon", "log-prob best-of-N", "mbr", "mbr_profile", "personalized N = 1", "plain N = 1",
             "oracle"]
    arms.sort(key=lambda a: (order.index(a.name), a.budget))
    table(arms, queries, config.convention)


if __name__ == "__main__":
    main()
