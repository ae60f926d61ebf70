"""`ttp serve` under load, side by side with the cold `ttp generate` and with sampling the
budget's candidates directly, in one run.

    python bench/serve_load.py [--run RUN] [--requests 200] [--concurrency 8] [--budget 8]

Starts `ttp serve` on a free loopback port on RUN (by default a small pep-titles run is made
under runs/bench-serve), sends a bounded number of requests (the test users' queries in turn,
each with its user and `best_of = budget`) with bounded concurrency, then stops the server.  Prints p50 and p99
latency, requests/s, errors (target 0), samples per request; then the time of one cold
`ttp generate` for the same request, and of one pool of `budget` candidates for the same
prompt on the embedded backend.  Goal: warm p50 <= 1.5x that pool."""
import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _data import pep_titles_dir

ROOT = Path(__file__).resolve().parents[1]
TTP = [sys.executable, "-m", "ttp.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_run(run: Path, data: Path) -> None:
    if (run / "PEP-titles" / "personalized" / "validation_scores.parquet").exists():
        return
    if not (data / "questions.json").exists():
        sys.exit(f"pep-titles not found at {data}; pass --data PATH or --run with a finished run folder")
    subprocess.run([*TTP, "run", "--task", str(data), "--out", str(run), "--pool-size", "8", "--max-users", "12",
                    "--max-queries-per-user", "2", "--max-tokens", "16"], check=True, stdout=subprocess.DEVNULL)


async def drive(url: str, bodies: list[dict], requests: int, concurrency: int):
    gate = asyncio.Semaphore(concurrency)
    latencies, errors, samples = [], 0, []
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(body):
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                r = await client.post(f"{url}/v1/completions", json=body)
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors += 1
                else:
                    samples.append(r.json()["ttp"]["samples"])
        start = time.perf_counter()
        await asyncio.gather(*(one(bodies[i % len(bodies)]) for i in range(requests)))
        return np.array(latencies), errors, samples, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-serve")
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget", type=int, default=8)
    args = parser.parse_args()
    ensure_run(args.run, pep_titles_dir(args.data))

    from ttp.runs.config import RunConfig
    from ttp.tasks.data import load_task

    config = RunConfig.load(args.run / "config.json")
    task = load_task(config.tasks[0].path)
    test_users = set(json.loads((args.run / task.name / "split.json").read_text())["test"])
    queries = [q for q in task.queries if q.user in test_users]
    bodies = [{"model": "ttp", "prompt": q.input, "user": q.user, "best_of": args.budget,
               "max_tokens": config.sampling.max_tokens} for q in queries]
    query = queries[0]

    port = _free_port()
    server = subprocess.Popen([*TTP, "serve", str(args.run), "--task", task.name, "--port", str(port),
                               "--db", str(args.run / "bench-profiles.sqlite"), "--max-queue", str(args.requests)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    sys.exit(server.stderr.read().decode())
                time.sleep(0.3)
        latencies, errors, samples, wall = asyncio.run(drive(url, bodies, args.requests, args.concurrency))
    finally:
        server.kill()
        server.wait()

    start = time.perf_counter()
    subprocess.run([*TTP, "generate", str(args.run), "--task", task.name, "--query-id", query.id,
                    "--budget", str(args.budget)], check=True, stdout=subprocess.DEVNULL)
    cold = time.perf_counter() - start

    from dataclasses import replace

    from ttp.policy.llama_cpp import LlamaCppBackend
    from ttp.tasks.prompts import PromptBuilder

    backend = LlamaCppBackend(n_ctx=config.n_ctx, max_sequences=args.budget, prompt_cache=False)
    prompts = [PromptBuilder(task.layout, "personalized", config.shots)(q) for q in queries]
    backend.sample(prompts[-1], replace(config.sampling, n=args.budget, seed=99))  # warm-up
    start = time.perf_counter()
    for prompt in prompts:        # distinct prompts: each is evaluated, as a new request's is
        backend.sample(prompt, replace(config.sampling, n=args.budget))
    pool = (time.perf_counter() - start) / len(prompts)

    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"{args.requests} requests, concurrency {args.concurrency}, budget {args.budget}, "
          f"server concurrency 1 (requests queue for the embedded model)")
    print(f"warm latency p50 {p50:.2f} s, p99 {p99:.2f} s; {args.requests / wall:.2f} requests/s; "
          f"errors {errors}; samples per request {np.mean(samples):.2f}")
    print(f"cold `ttp generate` for the same request: {cold:.2f} s")
    print(f"one pool of {args.budget} candidates for one of these prompts (mean of {len(prompts)}): {pool:.2f} s")
    print(f"warm p50 / pool: {p50 / pool:.2f}x (goal <= 1.5; with {args.concurrency} requests in flight a "
          f"request also waits for those ahead of it)")
    print(f"service time per request (wall / requests): {wall / args.requests:.2f} s = "
          f"{wall / args.requests / pool:.2f}x the pool")


if __name__ == "__main__":
    main()
