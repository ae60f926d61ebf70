"""`ttp serve` under load, side by side with the cold `ttp generate` and with sampling the
budget's candidates directly, in one run.

    python bench/serve_load.py [--run RUN] [--requests 200] [--concurrency 8] [--budget 8]

Starts `ttp serve` on a free loopback port on RUN (by default a small pep-titles run is made
under runs/bench-serve), sends a bounded number of requests (the test users' queries in turn,
each with its user and `best_of = budget`) with bounded concurrency, then stops the server.  Prints p50 and p99
latency, requests/s, errors (target 0), samples per request; then the time of one cold
`ttp generate` for the same request, and of one pool of `budget` candidates for the same
prompt on the embedded backend.  Goal: warm p50 <= 1.5x that pool.

    python bench/serve_load.py --faults [--run RUN] [--seconds 40]

The fault run instead: two `ttp serve` workers on one PostgreSQL (a pgserver started for the
run), feedback writers and completion clients spread over both (a client whose worker is
down goes to the other, as behind a load balancer), clients that drop a stream after its
first chunk, and one client that sends its request a byte at a time.  A quarter of the way
in, one worker is killed with SIGKILL; halfway, PostgreSQL is restarted.  It prints requests
served, errors by kind, and acknowledged feedback missing from the store (target 0), and
5xx answers other than the documented 503s (target 0).

    python bench/serve_load.py --abuse [--run RUN]

The abuse run: two `ttp serve` workers with API keys on one PostgreSQL (a pgserver started for
the run), then, one after another, each bounded in count and time: a key flooding feedback
across both workers; a key asking for users outside its scope on every endpoint; a revoked key
reused; an erasure while a stream for that user is in flight; a worker killed with SIGKILL in
the middle of a burst of writes.  It prints, for each, what was accepted, refused and lost,
beside what should hold: 0 writes outside a key's scope, 0 acknowledged writes lost, the
feedback limit held to within one request across the workers, 0 accepted uses of a revoked key
a second after its revocation."""
import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from _data import pep_titles_dir

from ttp.local_servers import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
TTP = [sys.executable, "-m", "ttp.cli"]


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


def start_server(run: Path, task: str, db: str, *extra) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([*TTP, "serve", str(run), "--task-name", task, "--port", str(port), "--db", db, *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    return up_or_exit(server, url, "/health"), url


def up_or_exit(server: subprocess.Popen, url: str, path: str) -> subprocess.Popen:
    """``server`` once ``url + path`` answers; the benchmark ends with the server's error if it does not."""
    try:
        wait_until_up(f"{url}{path}", server, timeout_s=300)
    except RuntimeError as err:
        sys.exit(str(err))
    return server


class Tally:
    """What the clients saw: answers by status, transport errors by kind, acknowledged feedback."""

    def __init__(self):
        self.kinds, self.acknowledged, self.served = Counter(), [], 0

    def answer(self, r: httpx.Response) -> bool:
        if r.status_code == 200:
            self.served += 1
            return True
        code = r.json().get("error", {}).get("code") if "json" in r.headers.get("content-type", "") else None
        self.kinds[f"HTTP {r.status_code} {code or ''}".strip()] += 1
        return False


async def faults(urls: list[str], bodies: list[dict], seconds: float, kill, restart_db) -> Tally:
    """Clients over ``urls`` for ``seconds``; ``kill`` at a quarter, ``restart_db`` at half."""
    tally, stop = Tally(), asyncio.Event()
    down: set[str] = set()

    async def post(client, path: str, body: dict, i: int):
        """The request on the i-th worker, or on the next one where that one cannot be reached."""
        for url in (urls[i % len(urls)], urls[(i + 1) % len(urls)]):
            if url in down:
                continue
            try:
                return await client.post(f"{url}{path}", json=body)
            except httpx.ConnectError:
                down.add(url)
                tally.kinds["connection refused (worker down; retried on the other)"] += 1
            except httpx.TransportError as err:
                tally.kinds[f"{type(err).__name__} (in flight when the worker died)"] += 1
                return None
        return None

    async def writer(w: int):
        async with httpx.AsyncClient(timeout=30) as client:
            i = 0
            while not stop.is_set():
                user, text = f"fault-{w}", f"input {w}-{i}"
                r = await post(client, "/v1/ttp/feedback", {"user": user, "input": text, "output": f"out {i}"}, i)
                if r is not None and tally.answer(r):
                    tally.acknowledged.append((user, text))
                i += 1
                await asyncio.sleep(0.05)

    async def completer():
        async with httpx.AsyncClient(timeout=120) as client:
            i = 0
            while not stop.is_set():
                r = await post(client, "/v1/completions", {**bodies[i % len(bodies)], "best_of": 2}, i)
                if r is not None:
                    tally.answer(r)
                i += 1

    async def dropper():
        """Streams cut after their first chunk."""
        async with httpx.AsyncClient(timeout=120) as client:
            i = 0
            while not stop.is_set():
                url = next((u for u in urls if u not in down), None)
                try:
                    async with client.stream("POST", f"{url}/v1/completions",
                                             json={**bodies[i % len(bodies)], "best_of": 1, "stream": True}) as r:
                        async for _ in r.aiter_lines():
                            tally.kinds["streams dropped after the first chunk"] += 1
                            break
                except httpx.TransportError as err:
                    tally.kinds[f"{type(err).__name__} (stream)"] += 1
                i += 1
                await asyncio.sleep(1)

    async def slow_client():
        """One request sent a byte every 20 ms; the workers serve the others meanwhile."""
        url = httpx.URL(next(u for u in urls if u not in down))
        body = json.dumps({"user": "fault-slow", "input": "slow input", "output": "slow output"}).encode()
        head = (f"POST /v1/ttp/feedback HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            reader, writer_ = await asyncio.open_connection(url.host, url.port)
            for byte in head + body:
                writer_.write(bytes([byte]))
                await writer_.drain()
                await asyncio.sleep(0.02)
            status = (await reader.readline()).decode().split(" ")[1]
            writer_.close()
            tally.kinds[f"slow client answered {status}"] += 1
            if status == "200":
                tally.served += 1
                tally.acknowledged.append(("fault-slow", "slow input"))
        except (OSError, IndexError) as err:
            tally.kinds[f"slow client: {type(err).__name__}"] += 1

    async def faults_on_time():
        await asyncio.sleep(seconds / 4)
        kill()
        await asyncio.sleep(seconds / 4)
        await asyncio.to_thread(restart_db)
        await asyncio.sleep(seconds / 2)
        stop.set()

    await asyncio.gather(faults_on_time(), slow_client(), dropper(), completer(), *(writer(w) for w in range(4)))
    return tally


def fault_run(run: Path, seconds: float) -> None:
    import tempfile

    import pgserver
    from pgserver._commands import pg_ctl

    from ttp.runs.config import RunConfig
    from ttp.serve.store import ProfileStore
    from ttp.tasks.data import load_task

    config = RunConfig.load(run / "config.json")
    task = load_task(config.tasks[0].path)
    bodies = [{"model": "ttp", "prompt": q.input, "user": q.user, "max_tokens": config.sampling.max_tokens}
              for q in task.queries[:20]]
    with tempfile.TemporaryDirectory() as scratch:
        database = pgserver.get_server(Path(scratch) / "pg", cleanup_mode="stop")
        url = database.get_uri()
        workers = [start_server(run, task.name, url, "--feedback-per-minute", "100000", "--max-queue", "64")]
        workers.append(start_server(run, task.name, url, "--feedback-per-minute", "100000", "--max-queue", "64"))
        killed = workers[0][0]
        restarts = []

        def restart_db():
            start = time.perf_counter()
            pg_ctl(["-w", "-m", "fast", "restart"], pgdata=database.pgdata, user=database.system_user, timeout=60)
            restarts.append(time.perf_counter() - start)

        try:
            start = time.perf_counter()
            tally = asyncio.run(faults([u for _, u in workers], bodies, seconds, killed.kill, restart_db))
            wall = time.perf_counter() - start
            store = ProfileStore(url)
            stored = {(user, text) for user in {u for u, _ in tally.acknowledged}
                      for text, _, _ in store.feedback(user)}
            survivor_up = httpx.get(f"{workers[1][1]}/health", timeout=5).status_code == 200
        finally:
            for proc, _ in workers:
                proc.kill()
                proc.wait()
            database.cleanup()
    lost = [a for a in tally.acknowledged if a not in stored]
    other_5xx = sum(n for kind, n in tally.kinds.items()
                    if kind.startswith("HTTP 5") and not kind.startswith("HTTP 503"))
    print(f"fault run: 2 workers on one PostgreSQL, {wall:.0f} s; SIGKILL of one worker at {seconds / 4:.0f} s, "
          f"PostgreSQL restarted at {seconds / 2:.0f} s (took {restarts[0]:.1f} s)")
    print(f"requests served (200): {tally.served}; feedback acknowledged: {len(tally.acknowledged)}")
    for kind, n in sorted(tally.kinds.items()):
        print(f"  {kind}: {n}")
    print(f"acknowledged feedback missing from the store: {len(lost)} (target 0)")
    print(f"5xx other than 503: {other_5xx} (target 0); surviving worker healthy at the end: {survivor_up}")


class Abuse:
    """The abuse run's setting: two workers with keys on one store; ``say`` prints one scenario's row."""

    def __init__(self, urls: list[str], keys: dict[str, str], store, key_file: Path, limit: int):
        self.urls, self.keys, self.store, self.key_file, self.limit = urls, keys, store, key_file, limit
        self.rows: list[tuple[str, str, str, str]] = []

    def post(self, client: httpx.Client, i: int, path: str, key: str, body: dict, method: str = "POST"):
        return client.request(method, f"{self.urls[i % len(self.urls)]}{path}", json=body if body else None,
                              headers={"Authorization": f"Bearer {self.keys[key]}"})

    def say(self, scenario: str, accepted: str, refused: Counter | str, check: str) -> None:
        refused = refused if isinstance(refused, str) else \
            ", ".join(f"{n} x {code}" for code, n in sorted(refused.items(), key=str)) or "none"
        self.rows.append((scenario, accepted, refused, check))


def flood(abuse: Abuse, requests: int = 60) -> None:
    """One key sends ``requests`` feedback items for one user, 8 at a time, over both workers."""
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: abuse.post(client, i, "/v1/ttp/feedback", "flooder",
                                                   {"user": "flood-1", "input": f"flood {i}", "output": "x"})
                              .status_code, range(requests)))
    written = sum(1 for f in abuse.store.records("flood-1")[0]["feedback"] if f["written_by"] == "flooder")
    accepted = codes.count(200)
    abuse.say(f"a key floods feedback ({requests} requests, limit {abuse.limit} a minute)",
              f"{accepted} (store: {written})", Counter(c for c in codes if c != 200),
              f"over the limit: {accepted - abuse.limit} (goal: at most 1)")


def out_of_scope(abuse: Abuse, mine: str, others: list[str]) -> None:
    """A key scoped to ``mine`` asks for other users (existing and not) on every endpoint, on both workers."""
    before = {user: abuse.store.user_record(user) for user in others}
    codes, accepted = Counter(), 0
    with httpx.Client(timeout=120) as client:
        for i, user in enumerate(others * 2):
            for method, path, body in (
                    ("POST", "/v1/ttp/feedback", {"user": user, "input": "not mine", "output": "x"}),
                    ("POST", "/v1/completions", {"model": "ttp", "prompt": "x", "user": user, "max_tokens": 2}),
                    ("POST", "/v1/ttp/score", {"user": user, "input": "x", "candidates": ["a"]}),
                    ("GET", f"/v1/ttp/users/{user}/profile", {}),
                    ("DELETE", f"/v1/ttp/users/{user}", {})):
                r = abuse.post(client, i, path, "scoped", body, method)
                accepted += r.status_code == 200
                codes[r.status_code] += r.status_code != 200
    changed = sum(abuse.store.user_record(user) != before[user] for user in others)
    outside = abuse.store._read("SELECT COUNT(*) FROM feedback WHERE written_by = 'scoped' AND user_id <> ?",
                                (mine,))[0][0]
    abuse.say(f"a key asks for {len(others)} users outside its scope (5 endpoints, both workers)", str(accepted),
              codes, f"writes outside the scope: {outside}, users changed: {changed} (goal: 0)")


def revoked(abuse: Abuse, seconds: float = 3.0) -> None:
    """A leaked key writes on both workers; it is revoked; its holder goes on for ``seconds``."""
    from ttp.serve.auth import revoke_key

    codes, late, first_refusal = Counter(), 0, {}
    with httpx.Client(timeout=30) as client:
        for i in range(10):
            codes[abuse.post(client, i, "/v1/ttp/feedback", "leaked", {"user": "leak-1", "input": f"before {i}",
                                                                      "output": "x"}).status_code] += 1
        revoke_key(abuse.key_file, "leaked")
        revoked_at, i = time.monotonic(), 0
        while time.monotonic() - revoked_at < seconds:
            r = abuse.post(client, i, "/v1/ttp/feedback", "leaked", {"user": "leak-1", "input": f"after {i}",
                                                                    "output": "x"})
            since = time.monotonic() - revoked_at
            if r.status_code == 401:
                first_refusal.setdefault(i % 2, since)
            late += r.status_code == 200 and since > 1.0
            codes[r.status_code] += 1
            i += 1
    erased = abuse.store.erase_written_by("leaked")
    refusal = max(first_refusal.values()) if len(first_refusal) == 2 else float("nan")
    abuse.say("a leaked key revoked while in use (then `ttp profiles delete --written-by`)",
              f"{codes[200]} (erased after: {erased['feedback']})",
              Counter({code: n for code, n in codes.items() if code != 200}),
              f"refused by both workers {refusal * 1000:.0f} ms after revocation; accepted after 1 s: {late} (goal: 0)")


def erase_during_stream(abuse: Abuse, user: str) -> None:
    """A stream for ``user`` is in flight on one worker while the other erases the user."""
    import threading

    outcome = {}

    def stream():
        body = {"model": "ttp", "prompt": "Generate a title for the following abstract of a paper: erasure",
                "user": user, "max_tokens": 16, "best_of": 8, "stream": True}
        with httpx.Client(timeout=120) as client, client.stream(
                "POST", f"{abuse.urls[0]}/v1/completions", json=body,
                headers={"Authorization": f"Bearer {abuse.keys['admin']}"}) as r:
            outcome["status"] = r.status_code
            outcome["done"] = any(line == "data: [DONE]" for line in r.iter_lines())
        outcome["finished"] = time.monotonic()

    streaming = threading.Thread(target=stream)
    streaming.start()
    time.sleep(0.3)
    with httpx.Client(timeout=30) as client:
        erased = abuse.post(client, 1, f"/v1/ttp/users/{user}", "admin", {}, "DELETE")
    erased_at = time.monotonic()
    streaming.join()
    rows = sum(abuse.store._read(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (user,))[0][0]
               for table, column in (("items", "user_id"), ("feedback", "user_id"), ("users", "id")))
    abuse.say("a user erased while a stream for them is in flight",
              f"erasure {erased.status_code}, {outcome['finished'] - erased_at:.1f} s before the stream "
              f"{outcome.get('status')} {'finished' if outcome.get('done') else 'was cut'}", "none",
              f"rows of the user left: {rows} (goal: 0)")


def killed_mid_write(abuse: Abuse, workers: list[subprocess.Popen], seconds: float = 4.0) -> None:
    """Four writers over both workers; one worker gets SIGKILL a quarter of the way in."""
    import threading

    acknowledged, failed, stop = [], Counter(), threading.Event()

    def writer(w: int):
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                user, text = f"kill-{w}", f"write {w}-{i}"
                try:
                    r = abuse.post(client, i, "/v1/ttp/feedback", "admin", {"user": user, "input": text, "output": "x"})
                    if r.status_code == 200:
                        acknowledged.append((user, text))
                    else:
                        failed[r.status_code] += 1
                except httpx.TransportError as err:
                    failed[type(err).__name__] += 1
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(seconds / 4)
    workers[0].kill()
    time.sleep(seconds * 3 / 4)
    stop.set()
    for t in threads:
        t.join()
    stored = {(user, text) for user in {u for u, _ in acknowledged} for text, _, _ in abuse.store.feedback(user)}
    lost = sum(a not in stored for a in acknowledged)
    abuse.say("a worker killed (SIGKILL) in a burst of writes", str(len(acknowledged)), failed,
              f"acknowledged writes lost: {lost} (goal: 0)")


def abuse_run(run: Path) -> None:
    import tempfile

    import pgserver

    from ttp.runs.config import RunConfig
    from ttp.serve.auth import add_key
    from ttp.serve.store import ProfileStore
    from ttp.tasks.data import load_task

    config = RunConfig.load(run / "config.json")
    task = load_task(config.tasks[0].path)
    users = sorted(task.users)
    mine, others, erased = users[0], [users[1], "nobody-at-all"], users[2]
    limit = 20
    with tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "keys.json"
        keys = {name: add_key(key_file, name, scope) for name, scope in
                (("admin", ["*"]), ("flooder", ["flood-*"]), ("scoped", [mine]), ("leaked", ["*"]))}
        database = pgserver.get_server(Path(scratch) / "pg", cleanup_mode="stop")
        url = database.get_uri()
        def pair(feedback_per_minute: int):
            return [start_server(run, task.name, url, "--api-keys", str(key_file), "--feedback-per-minute",
                                 str(feedback_per_minute)) for _ in range(2)]

        workers = pair(limit)
        store = ProfileStore(url)
        abuse = Abuse([u for _, u in workers], keys, store, key_file, limit)
        start = time.perf_counter()
        try:
            flood(abuse)
            out_of_scope(abuse, mine, others)
            revoked(abuse)
            erase_during_stream(abuse, erased)
            for proc, _ in workers:            # the burst of writes is not to be limited: a pair without a limit
                proc.kill()
                proc.wait()
            workers = pair(1_000_000)
            abuse.urls = [u for _, u in workers]
            killed_mid_write(abuse, [proc for proc, _ in workers])
        finally:
            for proc, _ in workers:
                proc.kill()
                proc.wait()
            store.close()
            database.cleanup()
    print(f"abuse run: 2 workers with API keys on one PostgreSQL, {time.perf_counter() - start:.0f} s")
    for scenario, accepted, refused, check in abuse.rows:
        print(f"- {scenario}\n    accepted: {accepted}; refused: {refused}\n    {check}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-serve")
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--faults", action="store_true", help="the fault run (two workers on one PostgreSQL)")
    parser.add_argument("--seconds", type=float, default=40, help="length of the fault run")
    parser.add_argument("--abuse", action="store_true", help="the abuse run (keys, two workers, one PostgreSQL)")
    args = parser.parse_args()
    ensure_run(args.run, pep_titles_dir(args.data))
    if args.faults:
        fault_run(args.run, args.seconds)
        return
    if args.abuse:
        abuse_run(args.run)
        return

    from ttp.runs.config import RunConfig
    from ttp.tasks.data import load_task

    config = RunConfig.load(args.run / "config.json")
    task = load_task(config.tasks[0].path)
    test_users = set(json.loads((args.run / task.name / "split.json").read_text())["test"])
    queries = [q for q in task.queries if q.user in test_users]
    bodies = [{"model": "ttp", "prompt": q.input, "user": q.user, "best_of": args.budget,
               "max_tokens": config.sampling.max_tokens} for q in queries]
    query = queries[0]

    server, url = start_server(args.run, task.name, str(args.run / "bench-profiles.sqlite"),
                               "--max-queue", str(args.requests))
    try:
        latencies, errors, samples, wall = asyncio.run(drive(url, bodies, args.requests, args.concurrency))
    finally:
        server.kill()
        server.wait()

    start = time.perf_counter()
    subprocess.run([*TTP, "generate", str(args.run), "--task-name", task.name, "--query-id", query.id,
                    "--budget", str(args.budget)], check=True, stdout=subprocess.DEVNULL)
    cold = time.perf_counter() - start

    from ttp.policy.llama_cpp import LlamaCppBackend
    from ttp.tasks.prompts import PromptBuilder

    backend = LlamaCppBackend(n_ctx=config.engine.n_ctx, max_sequences=args.budget, prompt_cache=False)
    prompts = [PromptBuilder(task.layout, "personalized", config.shots)(q) for q in queries]
    params = config.sampling.model_copy(update={"n": args.budget})
    backend.sample(prompts[-1], params.with_seed(99))  # warm-up
    start = time.perf_counter()
    for prompt in prompts:        # distinct prompts: each is evaluated, as a new request's is
        backend.sample(prompt, params)
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
