"""The OpenAI-compatible backend against a real llama.cpp server on loopback (Gemma 270M),
and against broken servers."""
import http.server
import math
import subprocess
import sys
import threading
import time

import pytest

from ttp.local_servers import free_port, wait_until_up
from ttp.policy import SamplingParams
from ttp.policy.llama_server import llama_server
from ttp.policy.openai_server import BackendError, OpenAICompatibleBackend
from ttp.runs.sampling import read_pools, sample_pools
from ttp.tasks.prompts import PromptBuilder

pytestmark = pytest.mark.slow


def start_server(port: int, *options: str) -> subprocess.Popen:
    """llama-cpp-python's server on the embedded model."""
    from ttp.policy.llama_cpp import default_model_path

    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc)
    return proc


@pytest.fixture()
def server():
    port = free_port()
    proc = start_server(port)
    yield port, proc
    proc.kill()
    proc.wait()


def test_candidates_of_a_pool_are_independent(server, pep_task):
    port, _ = server
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}", "gemma")
    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[0])
    pool = backend.sample(prompt, SamplingParams(n=4, max_tokens=12, seed=3))
    assert len(pool) == 4
    # four independent titles of up to 12 tokens at temperature 1: at most one repeat
    assert len({c.text for c in pool}) >= 3 and len({c.logprob for c in pool}) >= 3
    assert all(c.n_tokens > 0 for c in pool)


def test_killed_server_gives_a_clear_error_and_a_resumable_pool(server, pep_task, tmp_path):
    port, proc = server
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}", "gemma", retries=1, backoff=0.1)
    queries = list(pep_task.queries[:4])
    prompts = PromptBuilder(pep_task.layout, "plain")
    params = SamplingParams(n=2, max_tokens=8)
    path = tmp_path / "pools.jsonl"
    sample_pools(queries[:2], prompts, backend, params, path, show_progress=False)
    proc.kill()
    proc.wait()
    with pytest.raises(BackendError, match="no usable answer.*Rerun to resume"):
        sample_pools(queries, prompts, backend, params, path, show_progress=False)
    assert [r["query_id"] for r in read_pools(path)] == [q.id for q in queries[:2]]
    restarted = start_server(port)
    try:
        pools = sample_pools(queries, prompts, backend, params, path, show_progress=False)
    finally:
        restarted.kill()
        restarted.wait()
    assert [p["query_id"] for p in pools] == [q.id for q in queries]


def test_llama_servers_slots_draw_whole_pools_in_order_with_the_models_log_probabilities(pep_task, llama_reference):
    """llama.cpp's own server (make .venv/bin/llama-server) with 4 slots: it refuses n above its
    slots, so pools are topped up by seeded requests; its log-probabilities come in another shape."""
    build = PromptBuilder(pep_task.layout, "plain")
    prompts = [build(q) for q in pep_task.queries[:3]]
    greedy = SamplingParams(n=1, max_tokens=6, temperature=0, stop=())
    with llama_server(slots=4, ctx_per_slot=1024) as url:
        backend = OpenAICompatibleBackend(url, "gemma", max_concurrency=4)
        with pytest.warns(UserWarning, match="refused n = 6"):
            pools = backend.sample_many(prompts, [SamplingParams(n=6, max_tokens=8, seed=i) for i in range(3)])
        alone = [backend.sample(p, greedy)[0] for p in prompts]
        together = [pool[0] for pool in backend.sample_many(prompts, [greedy] * 3)]
    assert backend.max_n == 3 and [len(pool) for pool in pools] == [6, 6, 6]
    # a candidate that stops at once (a newline first) has no tokens; every other has its sum
    drawn = [c for pool in pools for c in pool if c.n_tokens]
    assert len(drawn) >= 12 and all(math.isfinite(c.logprob) and c.logprob < 0 for c in drawn)
    assert len({c.text for c in alone}) == 3
    # greedy continuations, each the model's own for its prompt (so in input order), up to what
    # batching four slots moves (1.5% of a sum here); that can change a greedy token after a few, so a query's draw
    # beside the others need not equal its draw alone (in this test, one title of three differs)
    for prompt, own, beside in zip(prompts, alone, together):
        assert own.text[:8] == beside.text[:8]
        for c in (own, beside):
            assert c.n_tokens == 6 and c.finish_reason == "length"
            # (a candidate's text is stripped; the model wrote it after the label's space)
            assert c.logprob == pytest.approx(llama_reference.logprob(prompt, " " + c.text), rel=0.05)


class _Broken(http.server.BaseHTTPRequestHandler):
    status, body = 200, b"this is not json"

    def do_POST(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, body, message", [
    (200, b"this is not json", "not a completions response"),
    (200, b'{"id": 1}', "not a completions response"),
    (503, b"overloaded", "no usable answer after 3 tries; last error: HTTP 503"),
    (400, b"bad prompt", "refused the request with HTTP 400"),
])
def test_broken_servers_are_reported_not_crashed_on(status, body, message):
    handler = type("Handler", (_Broken,), {"status": status, "body": body})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        backend = OpenAICompatibleBackend(f"http://127.0.0.1:{httpd.server_address[1]}", "m",
                                          retries=2, backoff=0.01)
        with pytest.raises(BackendError, match=message):
            backend.sample("p", SamplingParams(n=2))
    finally:
        httpd.shutdown()


def test_unreachable_server_fails_fast():
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", "m", retries=1, backoff=0.01,
                                      request_timeout=60)
    start = time.monotonic()
    with pytest.raises(BackendError, match="Is the server running"):
        backend.sample("p", SamplingParams(n=1))
    # a refused connection is told at once, not after the request's 60 s deadline
    assert time.monotonic() - start < 20


def test_scores_from_echoed_log_probabilities_match_the_embedded_model(pep_task, llama_reference):
    from ttp.policy.llama_cpp import LlamaCppBackend

    # the plain prompt (100 tokens, not the personalized 295): the llama.cpp server takes about a
    # third of a second per echoed token to list its top log-probabilities (207 s -> 76 s here)
    prompt = PromptBuilder(pep_task.layout, "plain")(pep_task.queries[0])
    texts = [" A Title About Hashing\n", " Deprecate modules\n"]
    # everything in this process first: two llama.cpp processes on 2 cores slow each other down
    local = LlamaCppBackend(n_ctx=4096, max_sequences=2)
    embedded = local.score(prompt, texts)
    local.close()
    one_pass = [llama_reference.logprob(prompt, text, "one") for text in texts]
    spread = max(llama_reference.spread(prompt, texts), 0.01)
    port = free_port()
    proc = start_server(port, "--logits_all", "true")
    try:
        remote = OpenAICompatibleBackend(f"http://127.0.0.1:{port}", "gemma", max_concurrency=1).score(prompt, texts)
    finally:
        proc.kill()
        proc.wait()
    for text, (lp, n), (own, own_n), reference in zip(texts, remote, embedded, one_pass):
        # the server evaluates prompt + continuation in one pass, as llama.cpp's own one-pass does
        assert lp == pytest.approx(reference, abs=1e-3)
        # the embedded backend decodes the pool after its cached prompt: apart from the one pass
        # by batching twice over (one pass vs two decodes, one continuation vs the pool)
        assert n == own_n and abs(lp - own) <= 2 * spread, (text, lp, own, spread)


def test_a_server_without_prompt_log_probabilities_gets_a_clear_error():
    # a completions answer that ignores echo and logprobs, as some servers give
    body = b'{"choices": [{"text": " yes", "index": 0, "finish_reason": "length"}]}'
    handler = type("Handler", (_Broken,), {"status": 200, "body": body})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        backend = OpenAICompatibleBackend(f"http://127.0.0.1:{httpd.server_address[1]}", "m", retries=0)
        with pytest.raises(BackendError, match="does not return the prompt's log-probabilities"):
            backend.score("Title:", [" A title\n"])
    finally:
        httpd.shutdown()
