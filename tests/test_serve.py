"""`ttp serve` on a small run folder made here, spoken to with the real `openai` client over
loopback: personalized and plain requests, n with best_of, streaming, usage, feedback that
changes retrieval, OpenAI-style errors, overload, and kill -9 during a burst of feedback."""
import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from ttp.local_servers import free_port, wait_until_up
from ttp.serve.store import ProfileStore

pytestmark = pytest.mark.slow
TASK = "PEP-titles"
ABSTRACT = "Generate a title for the following abstract of a paper: "


@pytest.fixture(scope="module")
def run_folder(small_run):
    return small_run


def _start(run_folder, db, *extra):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ttp.cli", "serve", str(run_folder), "--task-name", TASK, "--db",
                             str(db), "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", proc, timeout_s=120)
    return proc, url


@pytest.fixture(scope="module")
def server(run_folder, tmp_path_factory):
    proc, url = _start(run_folder, tmp_path_factory.mktemp("db") / "profiles.sqlite")
    yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def known_user(run_folder):
    return json.loads((run_folder / TASK / "split.json").read_text())["test"][0]


def test_models_and_health(server):
    url, client = server
    assert [m.id for m in client.models.list()] == ["ttp"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_completion_for_a_known_user_is_personalized(server, known_user):
    _, client = server
    r = client.completions.create(model="ttp", prompt=ABSTRACT + "A new syntax for structural pattern matching.",
                                  user=known_user, max_tokens=10, extra_body={"ttp": {"return_profile": True}})
    meta = r.model_extra["ttp"]
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.created > 0 and r.model == "ttp"
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
    assert meta["personalized"] and meta["user"] == known_user and meta["selector"] == "probabilistic/mean"
    assert r.choices[0].text == meta["candidates"][max(range(meta["samples"]), key=meta["scores"].__getitem__)]
    assert meta["chosen"]["sd"] > 0 and len(meta["retrieved_profile_items"]) == 3
    assert isinstance(meta["collapsed_user"], bool)


def test_requests_without_or_with_an_unknown_user_get_the_plain_policy(server):
    _, client = server
    for user in (None, "nobody-knows-me"):
        kwargs = {"user": user} if user else {}
        r = client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": ABSTRACT + "typing"}],
                                           max_tokens=8, **kwargs)
        meta = r.model_extra["ttp"]
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert not meta["personalized"] and "plain policy" in meta["stopped_because"]
        assert (user is None) or "unknown" in meta["stopped_because"]


COMPLETION_FIELDS = ("n", "best_of", "max_tokens", "temperature", "top_p", "seed", "stream", "stream_options",
                     "stop", "logprobs", "echo", "presence_penalty", "frequency_penalty", "logit_bias", "suffix",
                     "safety_identifier", "ttp")
CHAT_FIELDS = ("n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream",
               "stream_options", "stop", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
               "response_format", "tools", "tool_choice", "safety_identifier", "ttp")


@pytest.mark.parametrize("known", [True, False], ids=["known user", "unknown user"])
def test_every_optional_field_may_be_null(server, known_user, known):
    # clients such as LangChain send every field they do not set as null
    _, client = server
    user = known_user if known else "nobody-knows-me"
    r = client.completions.create(model="ttp", prompt=ABSTRACT + "Null fields everywhere.", user=user,
                                  extra_body=dict.fromkeys(COMPLETION_FIELDS))
    meta = r.model_extra["ttp"]
    assert len(r.choices) == 1 and meta["personalized"] is known and meta["budget"] == 8
    assert r.choices[0].text == meta["candidates"][max(range(meta["samples"]), key=meta["scores"].__getitem__)]
    chat = client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": ABSTRACT + "Nulls."}],
                                          user=user, extra_body=dict.fromkeys(CHAT_FIELDS))
    assert chat.choices[0].message.content is not None and chat.model_extra["ttp"]["personalized"] is known


def test_chat_content_as_a_list_of_text_parts_is_read_as_its_text(server, known_user):
    _, client = server
    parts = [{"type": "text", "text": ABSTRACT}, {"type": "text", "text": "Pattern matching for Python."}]
    r = client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": parts}],
                                       user=known_user, max_tokens=8, seed=5)
    same = client.chat.completions.create(model="ttp", user=known_user, max_tokens=8, seed=5, messages=[
        {"role": "user", "content": ABSTRACT + "Pattern matching for Python."}])
    assert r.model_extra["ttp"]["personalized"]
    assert r.model_extra["ttp"]["candidates"] == same.model_extra["ttp"]["candidates"]
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}]}])


def test_the_ttp_summary_header_repeats_the_body_without_per_candidate_lists(server, known_user):
    url, _ = server
    r = httpx.post(f"{url}/v1/completions", json={"model": "ttp", "prompt": ABSTRACT + "Headers.", "user": known_user,
                                                  "max_tokens": 8}, timeout=120)
    meta, summary = r.json()["ttp"], json.loads(r.headers["x-ttp"])
    assert "retrieved_profile_items" not in meta      # listed only when asked for (ttp.return_profile)
    assert summary == {k: v for k, v in meta.items() if k not in ("candidates", "scores", "candidate_tokens")}
    assert summary["personalized"] and summary["samples"] == len(meta["candidates"])


def _langchain(url, user, **settings):
    """LangChain's two OpenAI clients as a new user points them at `ttp serve`: base_url, and the
    user among the model's keyword arguments, the way LangChain passes a field it has no name for."""
    from langchain_openai import ChatOpenAI, OpenAI

    common = dict(base_url=f"{url}/v1", api_key="unused", model="ttp", max_retries=0, timeout=120,
                  model_kwargs={"user": user}, **settings)
    return ChatOpenAI(include_response_headers=True, **common), OpenAI(**common)


def test_langchain_clients_get_the_personalized_pick_streamed_or_not(server, known_user):
    url, client = server
    text = ABSTRACT + "Type hints for the standard library."
    chat, llm = _langchain(url, known_user, max_tokens=8, seed=11)
    # the same request through the openai client: same seed, same pool, same pick
    expected = client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": text}],
                                              user=known_user, max_tokens=8, seed=11)
    answer = chat.invoke(text)
    assert answer.content == expected.choices[0].message.content
    summary = json.loads(answer.response_metadata["headers"]["x-ttp"])
    assert summary["personalized"] and summary["user"] == known_user
    assert summary["samples"] == expected.model_extra["ttp"]["samples"]
    assert "".join(chunk.content for chunk in chat.stream(text)) == answer.content
    # OpenAI(...) sends every field it does not set, "seed": null among them when none is given
    completion = client.completions.create(model="ttp", prompt=text, user=known_user, max_tokens=8, seed=11,
                                           temperature=0.7, top_p=1)
    assert llm.invoke(text) == completion.choices[0].text
    assert "".join(llm.stream(text)) == completion.choices[0].text
    unseeded, _ = _langchain(url, known_user, max_tokens=8)
    _, unseeded_llm = _langchain(url, known_user, max_tokens=8)
    assert unseeded_llm.invoke(text) and unseeded.invoke([{"role": "user", "content": [
        {"type": "text", "text": text}]}]).content


def test_n_with_best_of_and_usage_counting_every_sample(server, known_user):
    _, client = server
    r = client.completions.create(model="ttp", prompt=ABSTRACT + "Deprecate a module of the standard library.",
                                  user=known_user, n=2, best_of=4, max_tokens=10)
    meta = r.model_extra["ttp"]
    assert len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1]
    assert 2 <= meta["samples"] <= 4 and meta["budget"] == 4
    assert r.usage.completion_tokens == sum(meta["candidate_tokens"])
    assert len(meta["candidate_tokens"]) == meta["samples"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens and r.usage.prompt_tokens > 0
    picked = sorted(meta["scores"], reverse=True)[:2]
    assert [meta["scores"][meta["candidates"].index(c.text)] for c in r.choices] == pytest.approx(picked)


def test_budget_through_extra_body_caps_the_samples(server, known_user):
    _, client = server
    r = client.completions.create(model="ttp", prompt=ABSTRACT + "A faster interpreter.", user=known_user,
                                  max_tokens=8, extra_body={"ttp": {"budget": 2}})
    assert r.model_extra["ttp"]["samples"] <= 2 and r.model_extra["ttp"]["budget"] == 2


def test_streaming_reads_back_with_the_client_iterator(server, known_user):
    _, client = server
    stream = client.chat.completions.create(model="ttp", messages=[{"role": "user", "content": ABSTRACT + "asyncio"}],
                                            user=known_user, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_feedback_changes_what_the_next_request_retrieves(server, known_user):
    url, client = server
    question = ABSTRACT + "The zebra quokka marsupial handshake protocol for wombat interpreters."

    def retrieved():
        r = client.completions.create(model="ttp", prompt=question, user=known_user, max_tokens=6,
                                      extra_body={"ttp": {"budget": 1, "return_profile": True}})
        return r.model_extra["ttp"]["retrieved_profile_items"]

    assert not any(item.startswith("feedback-") for item in retrieved())
    answer = httpx.post(f"{url}/v1/ttp/feedback", json={"user": known_user, "input": "zebra quokka marsupial "
                        "handshake wombat protocol", "output": "Zebra Quokka Handshakes", "rating": 1})
    assert answer.status_code == 200 and answer.headers["x-request-id"]
    assert any(item.startswith("feedback-") for item in retrieved())


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"model": "ttp", "prompt": "x", "best_of": -3}).encode(), 400, "best_of must be"),
    (json.dumps({"model": "ttp", "prompt": "x", "best_of": 10**6}).encode(), 400, "best_of must be"),
    (json.dumps({"model": "ttp", "prompt": "x", "n": 3, "best_of": 2}).encode(), 400, "at least n"),
    (json.dumps({"model": "ttp", "prompt": ["a", "b"]}).encode(), 400, "prompt must be one string"),
    (json.dumps({"model": "ttp", "prompt": "word " * 20000}).encode(), 400, "exceed the context"),
], ids=["malformed JSON", "unknown model", "negative best_of", "huge best_of", "best_of below n",
        "several prompts", "text over the context"])
def test_bad_requests_get_openai_style_errors_and_the_server_stays_up(server, body, status, message):
    url, _ = server
    r = httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status and message in r.json()["error"]["message"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.headers["x-request-id"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_the_client_raises_the_matching_errors(server):
    _, client = server
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="ttp", prompt="x", best_of=-1)


def _metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value in Prometheus' text format (0 where it has none yet)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_samples_and_latency(server, known_user):
    url, client = server
    before = httpx.get(f"{url}/metrics").text
    for name in ("ttp_requests_total", "ttp_samples_drawn_total", "ttp_request_latency_seconds_bucket",
                 "ttp_queue_depth"):
        assert name in before
    r = client.completions.create(model="ttp", prompt=ABSTRACT + "Counting metrics.", user=known_user,
                                  max_tokens=8, extra_body={"ttp": {"budget": 3}})
    after = httpx.get(f"{url}/metrics").text
    ok = '{endpoint="/v1/completions",status="200"}'
    assert _metric(after, "ttp_requests_total", ok) == _metric(before, "ttp_requests_total", ok) + 1
    drawn = _metric(after, "ttp_samples_drawn_total") - _metric(before, "ttp_samples_drawn_total")
    assert drawn == r.model_extra["ttp"]["samples"] >= 1
    count = '{endpoint="/v1/completions"}'
    assert _metric(after, "ttp_request_latency_seconds_count", count) == \
        _metric(before, "ttp_request_latency_seconds_count", count) + 1
    assert _metric(after, "ttp_queue_depth") == 0


def test_overload_answers_503_and_kill_9_keeps_every_acknowledged_feedback(run_folder, tmp_path, known_user):
    db = tmp_path / "profiles.sqlite"
    proc, url = _start(run_folder, db, "--max-queue", "0", "--feedback-per-minute", "1000000")
    statuses = []

    def ask():
        r = httpx.post(f"{url}/v1/completions", json={"model": "ttp", "prompt": ABSTRACT + "x", "user": known_user,
                                                      "best_of": 8, "max_tokens": 16}, timeout=120)
        statuses.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (200, None) in statuses and (503, "2") in statuses

    acknowledged, stop = [], threading.Event()

    def burst():
        with httpx.Client(timeout=10) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = http.post(f"{url}/v1/ttp/feedback", json={"user": f"burst-{i % 3}", "input": f"input {i}",
                                                                  "output": f"output {i}"})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    acknowledged.append((f"burst-{i % 3}", f"input {i}"))

    writer = threading.Thread(target=burst)
    writer.start()
    while len(acknowledged) < 30:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    writer.join()
    store = ProfileStore(db)
    assert store._read("PRAGMA integrity_check") == [("ok",)]
    stored = {(user, text) for user in ("burst-0", "burst-1", "burst-2") for text, _, _ in store.feedback(user)}
    assert set(acknowledged) <= stored
    restarted, url = _start(run_folder, db)
    try:
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        restarted.kill()
        restarted.wait()


def test_keys_scope_users_and_feedback_is_capped(run_folder, tmp_path, known_user):
    from ttp.serve.auth import add_key

    keys = tmp_path / "keys.json"
    app_key, alice = add_key(keys, "app", ["*"]), add_key(keys, "alice", [known_user, "lab-*"])
    other = json.loads((run_folder / TASK / "split.json").read_text())["test"][1]
    proc, url = _start(run_folder, tmp_path / "profiles.sqlite", "--api-keys", str(keys),
                       "--feedback-per-minute", "3", "--max-feedback-chars", "100")
    try:
        def ask(key, user, **extra):
            return httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"} if key else {},
                              json={"model": "ttp", "prompt": ABSTRACT + "Scopes.", "max_tokens": 6,
                                    "ttp": {"budget": 2}, **({"user": user} if user else {}), **extra}, timeout=120)

        for refused in (ask(None, known_user), ask("ttp-not-a-key", known_user)):
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401 and httpx.get(f"{url}/health").status_code == 200
        mine = openai.OpenAI(base_url=f"{url}/v1", api_key=alice, max_retries=0, timeout=120)
        r = mine.completions.create(model="ttp", prompt=ABSTRACT + "Mine.", user=known_user, max_tokens=6,
                                    extra_body={"ttp": {"budget": 2, "return_profile": True}})
        assert r.model_extra["ttp"]["personalized"] and len(r.model_extra["ttp"]["retrieved_profile_items"]) == 3
        assert not ask(alice, None).json()["ttp"]["personalized"]            # no user: the plain policy
        assert not ask(alice, "lab-new").json()["ttp"]["personalized"]       # in scope, not in the store
        # another user, existing or not: one answer, so ids cannot be probed
        exists, missing = ask(alice, other), ask(alice, "nobody-knows-me")
        assert exists.status_code == missing.status_code == 403
        assert exists.json()["error"] == missing.json()["error"] and "alice" in exists.json()["error"]["message"]
        assert ask(app_key, other).json()["ttp"]["personalized"]

        def feedback(key, user, output="Out"):
            return httpx.post(f"{url}/v1/ttp/feedback", headers={"Authorization": f"Bearer {key}"},
                              json={"user": user, "input": "In", "output": output})

        assert feedback(alice, other).status_code == 403
        assert feedback(alice, known_user, "x" * 200).status_code == 413
        assert [feedback(alice, known_user).status_code for _ in range(3)] == [200] * 3
        limited = feedback(alice, known_user)
        assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 60
        assert feedback(app_key, "lab-9").status_code == 200     # another user and key: their own minute

        def score(key, user):
            return httpx.post(f"{url}/v1/ttp/score", headers={"Authorization": f"Bearer {key}"} if key else {},
                              json={"user": user, "input": "x", "candidates": ["a"]}, timeout=120)

        exists, missing = score(alice, other), score(alice, "nobody-knows-me")
        assert exists.status_code == missing.status_code == 403 and exists.json() == missing.json()
        assert score(None, known_user).status_code == 401 and score(alice, known_user).status_code == 200
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {app_key}"})
        assert metrics.status_code == 200 and "ttp_requests_total" in metrics.text
        assert not any(secret in metrics.text for secret in (alice, app_key, known_user, "Scopes", "Out"))
    finally:
        proc.kill()
        proc.wait()
    assert not any(secret in proc.stderr.read().decode() + proc.stdout.read().decode() for secret in (alice, app_key))


def test_keys_are_revoked_rotated_and_added_on_a_running_server(run_folder, tmp_path, known_user):
    from ttp.serve.auth import add_key, revoke_key, rotate_key

    keys = tmp_path / "keys.json"
    alice = add_key(keys, "alice", [known_user])
    proc, url = _start(run_folder, tmp_path / "profiles.sqlite", "--api-keys", str(keys))
    try:
        def models(key, scheme="Bearer"):
            return httpx.get(f"{url}/v1/models", headers={"Authorization": f"{scheme} {key}"}).status_code

        assert models(alice) == models(alice, "bearer") == models(alice, "BEARER") == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=alice, max_retries=0, timeout=120)
        assert client.models.list().data[0].id == "ttp"
        bob = add_key(keys, "bob", ["bob"])              # a key added while serving works at once
        assert models(bob) == 200
        new = rotate_key(keys, "alice")
        assert models(new) == 200 and models(alice) == 401
        revoke_key(keys, "alice")
        revoked_at = time.monotonic()
        refused = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {new}"})
        assert time.monotonic() - revoked_at < 1.0
        assert refused.status_code == 401 and "(alice) is revoked" in refused.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key=new, max_retries=0).models.list()
        assert httpx.get(f"{url}/health").json()["key_file"] == "ok"
    finally:
        proc.kill()
        proc.wait()


def test_a_user_exports_and_erases_their_data_and_is_then_served_as_unknown(run_folder, tmp_path, known_user):
    from ttp.serve.auth import add_key

    keys = tmp_path / "keys.json"
    mine, app_key = add_key(keys, "mine", [known_user]), add_key(keys, "app", ["*"])
    other = json.loads((run_folder / TASK / "split.json").read_text())["test"][1]
    db = tmp_path / "profiles.sqlite"
    proc, url = _start(run_folder, db, "--api-keys", str(keys))
    try:
        def call(method, path, key, **body):
            return httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {key}"},
                                 timeout=120, **({"json": body} if body else {}))

        assert call("POST", "/v1/ttp/feedback", mine, user=known_user, input="My input", output="My output").is_success
        exported = call("GET", f"/v1/ttp/users/{known_user}/profile", mine).json()
        assert exported["object"] == "ttp.user" and exported["user"] == known_user
        assert exported["feedback"][0]["written_by"] == "mine" and len(exported["profile"]) > 1
        # another user's data, existing or not: one answer
        exists, missing = call("GET", f"/v1/ttp/users/{other}/profile", mine), \
            call("GET", "/v1/ttp/users/nobody/profile", mine)
        assert exists.status_code == missing.status_code == 403 and exists.json() == missing.json()
        assert call("DELETE", f"/v1/ttp/users/{other}", mine).status_code == 403
        assert ProfileStore(db).has_user(other)

        asked = {"prompt": ABSTRACT + "Erasure.", "user": known_user, "max_tokens": 6, "ttp": {"budget": 2}}
        assert call("POST", "/v1/completions", mine, model="ttp", **asked).json()["ttp"]["personalized"]
        erased = call("DELETE", f"/v1/ttp/users/{known_user}", mine)
        assert erased.json() == {"id": known_user, "object": "ttp.user", "deleted": True,
                                 "profile_items": len(exported["profile"]), "feedback": 1}
        after = call("POST", "/v1/completions", mine, model="ttp", **asked).json()["ttp"]
        assert not after["personalized"] and "is unknown" in after["stopped_because"]
        assert call("GET", f"/v1/ttp/users/{known_user}/profile", mine).status_code == 404
        assert call("DELETE", f"/v1/ttp/users/{known_user}", mine).status_code == 404
        store = ProfileStore(db)
        assert store.user_record(known_user) is None and store.has_user(other)
        for table, column in (("items", "user_id"), ("feedback", "user_id"), ("users", "id"),
                              ("limit_events", "subject")):
            value = known_user if column != "subject" else f"user:{known_user}"
            assert store._read(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (value,)) == [(0,)]
    finally:
        proc.kill()
        proc.wait()
    restarted, url = _start(run_folder, db, "--api-keys", str(keys))      # a restart imports nothing again
    try:
        assert not ProfileStore(db).has_user(known_user)
        assert call("GET", f"/v1/ttp/users/{other}/profile", app_key).status_code == 200
    finally:
        restarted.kill()
        restarted.wait()


def test_two_workers_on_one_postgres_hold_one_feedback_limit_and_one_erasure(run_folder, fresh_database, known_user):
    first, url_a = _start(run_folder, fresh_database, "--feedback-per-minute", "5")
    second, url_b = _start(run_folder, fresh_database, "--feedback-per-minute", "5")
    try:
        statuses = [httpx.post(f"{url}/v1/ttp/feedback", json={"user": known_user, "input": f"in {i}",
                                                                "output": "out"}).status_code
                    for i, url in zip(range(12), [url_a, url_b] * 6)]
        assert statuses.count(200) == 5 and statuses.count(429) == 7          # one worker alone would allow 5
        assert httpx.delete(f"{url_b}/v1/ttp/users/{known_user}").json()["deleted"]
        body = {"model": "ttp", "prompt": ABSTRACT + "x", "user": known_user, "max_tokens": 4, "ttp": {"budget": 1}}
        assert not httpx.post(f"{url_a}/v1/completions", json=body, timeout=120).json()["ttp"]["personalized"]
        # the erased user's counters went with them: feedback is allowed again
        assert httpx.post(f"{url_a}/v1/ttp/feedback", json={"user": known_user, "input": "i",
                                                            "output": "o"}).status_code == 200
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_feedback_sent_to_one_worker_is_retrieved_by_another_on_one_postgres(run_folder, fresh_database, known_user):
    first, url_a = _start(run_folder, fresh_database)
    second, url_b = _start(run_folder, fresh_database)
    try:
        question = ABSTRACT + "Marsupial quokka interpreters for wombat bytecode."

        def retrieved(url):
            body = {"model": "ttp", "prompt": question, "user": known_user, "max_tokens": 4,
                    "ttp": {"budget": 1, "return_profile": True}}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
            return r.json()["ttp"]["retrieved_profile_items"]

        assert not any(item.startswith("feedback-") for item in retrieved(url_b))
        said = httpx.post(f"{url_a}/v1/ttp/feedback", json={"user": known_user, "input": "marsupial quokka wombat "
                          "interpreters bytecode", "output": "Quokka Bytecode for Wombats"})
        assert said.status_code == 200
        assert any(item.startswith("feedback-") for item in retrieved(url_b))
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_concurrent_requests_reach_an_upstream_engine_together(run_folder, tmp_path, known_user):
    from slow_upstream import SlowUpstream

    upstream = SlowUpstream(0.5, text=lambda body, i: f" An upstream title {i}", token_logprobs=(-0.5, -0.7))
    proc, url = _start(run_folder, tmp_path / "profiles.sqlite", "--server-url", upstream.url, "--server-model", "m",
                       "--concurrency", "2")
    try:
        answers = []

        def ask():
            answers.append(httpx.post(f"{url}/v1/completions", timeout=120, json={
                "model": "ttp", "prompt": ABSTRACT + "Upstream.", "user": known_user, "ttp": {"budget": 2}}))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [200, 200]
        assert all(a.json()["choices"][0]["text"].startswith("An upstream title") for a in answers)
        assert upstream.most >= 2   # the two users' candidates were at the upstream at the same time
    finally:
        proc.kill()
        proc.wait()
        upstream.close()


@pytest.fixture(scope="module")
def scoring_server(run_folder, tmp_path_factory):
    """A server whose store holds only the task's profiles: no test sends it feedback."""
    proc, url = _start(run_folder, tmp_path_factory.mktemp("scoring") / "profiles.sqlite")
    yield url
    proc.kill()
    proc.wait()


def _held_out_pools(run_folder, part="test"):
    import pandas as pd

    from ttp.runs.config import RunConfig
    from ttp.tasks.data import load_task

    task = load_task(RunConfig.load(run_folder / "config.json").tasks[0].path)
    table = pd.read_parquet(run_folder / TASK / "personalized" / f"{part}_scores.parquet")
    return [(task.by_id()[q], pool) for q, pool in table.groupby("query_id", sort=False)]


def test_the_score_endpoint_gives_the_runs_stored_scores_for_the_same_candidates(scoring_server, run_folder):
    import numpy as np

    url = scoring_server
    pools = _held_out_pools(run_folder)
    for query, pool in pools:
        candidates = [{"text": t, "logprob": lp, "n_tokens": int(n)}
                      for t, lp, n in zip(pool["text"], pool["logprob"], pool["n_tokens"])]
        r = httpx.post(f"{url}/v1/ttp/score", json={"model": "ttp", "user": query.user, "input": query.input,
                                                     "candidates": candidates}, timeout=120)
        answer = r.json()
        assert r.status_code == 200 and answer["selector"] == "probabilistic/mean" and answer["personalized"]
        assert [d["index"] for d in answer["data"]] == list(range(len(pool)))
        # the store's profile less this input's own record is the profile the run scored with
        np.testing.assert_allclose([d["score"] for d in answer["data"]], pool["score:probabilistic/mean"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([d["sd"] for d in answer["data"]], pool["sd:probabilistic"], rtol=1e-5, atol=1e-6)
    query, pool = pools[0]
    texts = httpx.post(f"{url}/v1/ttp/score", json={"user": query.user, "input": query.input,
                                                    "candidates": list(pool["text"])}, timeout=120).json()
    assert texts["personalized"] and all(d["sd"] > 0 for d in texts["data"])     # teacher-forced log-probabilities
    plain = httpx.post(f"{url}/v1/ttp/score", json={"user": "nobody", "input": query.input,
                                                    "candidates": ["A title", "Another title"]}, timeout=120).json()
    assert plain["selector"] == "generic/mean_logprob" and not plain["personalized"]
    assert all(d["mean"] is None and d["score"] < 0 for d in plain["data"])
    wrong = httpx.post(f"{url}/v1/ttp/score", json={"model": "gpt-4", "user": "u", "input": "x", "candidates": ["a"]})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"


def _score_requests(url) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("ttp_requests_total") and 'endpoint="/v1/ttp/score"' in line)


def test_a_run_scored_by_another_serve_is_judged_and_served_like_its_stored_selector(scoring_server, run_folder,
                                                                                      tmp_path, known_user):
    import shutil

    import numpy as np

    from ttp.cli import main
    from ttp.rewards.remote import RemoteScorer
    from ttp.runs.additions import score_from_url
    from ttp.runs.pipeline import Pipeline

    url = scoring_server
    copy = shutil.copytree(run_folder, tmp_path / "run")
    held_out = len(_held_out_pools(copy, "validation")) + len(_held_out_pools(copy))

    class Interrupted(RemoteScorer):
        calls = 0

        def __call__(self, *args):
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(*args)

    with pytest.raises(KeyboardInterrupt):
        score_from_url(Pipeline.resume(copy, show_progress=False), Interrupted(url), TASK, "personalized", "remote")
    before = _score_requests(url)
    assert main(["scores", str(copy), "--task-name", TASK, "--name", "remote", "--from-url", url]) == 0
    assert _score_requests(url) - before == held_out - 2          # the two pools scored before are not asked again
    cell = copy / TASK / "personalized"
    evaluation = json.loads((cell / "reward_eval.json").read_text())["selectors"]
    remote, stored = evaluation["remote"], evaluation["probabilistic/mean"]
    for field in ("mean", "low", "high"):
        np.testing.assert_allclose(remote["curve"][field], stored["curve"][field], atol=1e-6)
    for n, share in stored["oracle_gain_share"].items():
        np.testing.assert_allclose(remote["oracle_gain_share"][n], share, atol=1e-6)
    diagnoses = json.loads((cell / "diagnosis.json").read_text())
    assert diagnoses["remote"]["rho_bar"] == pytest.approx(diagnoses["probabilistic/mean"]["rho_bar"], abs=1e-6)
    rules = json.loads((cell / "online_rules.json").read_text())
    assert rules["remote"]["rule"] == rules["probabilistic/mean"]["rule"]
    # online: a server on the copy picks with the first server's reward model, as the first server picks
    proc, remote_url = _start(copy, tmp_path / "profiles.sqlite", "--reward-url", url, "--selector", "remote")
    try:
        body = {"model": "ttp", "prompt": ABSTRACT + "Remote rewards.", "user": known_user, "seed": 7,
                "max_tokens": 8, "ttp": {"budget": 3}}
        direct, relayed = (httpx.post(f"{u}/v1/completions", json=body, timeout=120).json() for u in (url, remote_url))
        assert relayed["ttp"]["selector"] == "remote" and relayed["ttp"]["candidates"] == direct["ttp"]["candidates"]
        np.testing.assert_allclose(relayed["ttp"]["scores"], direct["ttp"]["scores"], rtol=1e-6)
        assert relayed["choices"][0]["text"] == direct["choices"][0]["text"]
    finally:
        proc.kill()
        proc.wait()
