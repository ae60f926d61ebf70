"""Hostile and careless input, as a table: broken task files, bad options, damaged pool files,
crafted run folders, over-long texts.  Every case must end in one clear error naming what is
wrong, or in correct work, and must lose nothing already computed.  The server-side cases
(trickling, refusing, overloaded servers) follow the table."""
import http.server
import json
import os
import pickle
import re
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ttp.cli import main
from ttp.policy import Completion, ContextOverflow, PolicyBackend, SamplingParams
from ttp.policy.openai_server import BackendError, OpenAICompatibleBackend
from ttp.rewards.features import EmbeddingCache
from ttp.rewards.models import ModelFileError, RewardModel
from ttp.runs.config import ConfigError, RunConfig
from ttp.runs.folder import RunFolder, RunInUse
from ttp.runs.sampling import PoolFileError, draw_pools, read_pools, sample_pools
from ttp.tasks.data import TaskFormatError, load_task
from ttp.tasks.prompts import PromptBuilder

FIXTURE = Path(__file__).resolve().parent / "data" / "pep-titles-mini"
GOOD = {"id": "q1", "user": "u1", "input": "Generate a title for the following abstract of a paper: words",
        "profile": [{"id": "p1", "title": "A title", "abstract": "An abstract"}]}
GOLDS = {"task": "t", "golds": [{"id": "q1", "output": "gold"}]}


def _task_dir(tmp_path, questions=None, outputs=None, raw_questions=None, raw_outputs=None):
    (tmp_path / "questions.json").write_bytes(raw_questions if raw_questions is not None else
                                              json.dumps([GOOD] if questions is None else questions).encode())
    (tmp_path / "outputs.json").write_bytes(raw_outputs if raw_outputs is not None else
                                            json.dumps(GOLDS if outputs is None else outputs).encode())
    return tmp_path


def _record(**changes):
    record = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return record


# ---- task files: (id, questions, outputs, raw questions, raw outputs, message) -------------------
TASK_CASES = [
    ("no questions file", None, None, None, None, "questions.json: file not found"),
    ("invalid JSON", None, None, b"[{", None, r"questions.json: not valid JSON"),
    ("questions not UTF-8", None, None, json.dumps([GOOD]).encode().replace(b"words", b"w\xe9rds"), None,
     r"questions.json: not UTF-8"),
    ("outputs not UTF-8", None, None, None, json.dumps(GOLDS).encode().replace(b"gold", b"g\xf6ld"),
     r"outputs.json: not UTF-8"),
    ("questions an object", {"a": 1}, None, None, None, "expected a non-empty JSON list"),
    ("questions empty", [], None, None, None, "expected a non-empty JSON list"),
    ("record a number", [3], None, None, None, r"record \[0\]: expected an object"),
    ("record without id", [_record(id=None)], None, None, None, r"record \[0\]: missing field 'id'"),
    ("id a boolean", [_record(id=True)], None, None, None, r"field 'id' must be a string"),
    ("duplicate query id", [GOOD, GOOD], None, None, None, "record q1: duplicate id"),
    ("no input", [_record(input=None)], None, None, None, "record q1: missing field 'input'"),
    ("input a list", [_record(input=["x"])], None, None, None, "record q1: field 'input' must be a string"),
    ("no profile", [_record(profile=None)], None, None, None, "record q1: missing field 'profile'"),
    ("profile empty", [_record(profile=[])], None, None, None, "field 'profile' must be a non-empty list"),
    ("profile a string", [_record(profile="x")], None, None, None, "field 'profile' must be a non-empty list"),
    ("profile item a string", [_record(profile=[{"id": "p", "title": "t", "abstract": "a"}, "x"])], None, None,
     None, r"field 'profile\[1\]' must be an object"),
    ("profile item lacks its source", [_record(profile=[{"id": "p", "title": "t", "abstract": "a"},
                                                         {"id": "p2", "title": "t"}])], None, None, None,
     r"field 'profile\[1\].abstract' is missing"),
    ("profile title a number", [_record(profile=[{"id": "p", "title": 5, "abstract": "a"}])], None, None, None,
     r"field 'profile\[0\].title' must be a string"),
    ("unknown profile layout", [_record(profile=[{"id": "p", "body": "x"}])], None, None, None,
     "cannot tell the profile layout"),
    ("no gold for a query", None, {"golds": [{"id": "other", "output": "g"}]}, None, None,
     "no gold output for query id q1"),
    ("golds not a list", None, {"golds": {"id": "q1"}}, None, None, "expected an object with a 'golds' list"),
    ("gold without output", None, {"golds": [{"id": "q1"}]}, None, None, "record q1: missing field 'output'"),
    ("gold output a number", None, {"golds": [{"id": "q1", "output": 3}]}, None, None,
     "record q1: field 'output' must be a string"),
    ("duplicate gold id", None, {"golds": [{"id": "q1", "output": "a"}, {"id": "q1", "output": "b"}]}, None, None,
     "record q1: duplicate id"),
    ("task name climbs out", None, {"task": "../../x", "golds": GOLDS["golds"]}, None, None,
     "field 'task': task name '../../x' cannot name a folder"),
    ("task name absolute", None, {"task": "/tmp/x", "golds": GOLDS["golds"]}, None, None,
     "cannot name a folder"),
    ("task name hidden", None, {"task": ".hidden", "golds": GOLDS["golds"]}, None, None, "cannot name a folder"),
]


@pytest.mark.parametrize("questions, outputs, raw_q, raw_o, message",
                         [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES])
def test_broken_task_files(tmp_path, questions, outputs, raw_q, raw_o, message):
    if raw_q is None and questions is None and message.startswith("questions.json: file not found"):
        (tmp_path / "outputs.json").write_text(json.dumps(GOLDS))
    else:
        _task_dir(tmp_path, questions, outputs, raw_q, raw_o)
    with pytest.raises(TaskFormatError, match=message) as err:
        load_task(tmp_path)
    assert "\n" not in str(err.value)


# ---- the command line: (id, arguments, message); every one stops before any sampling -----------
def _cli_cases(run: str):
    task = str(FIXTURE)
    return [
        ("negative max users", ["run", "--task", task, "--out", run, "--max-users", "-2"],
         r"--max-users.*greater than or equal to 0"),
        ("negative queries per user", ["run", "--task", task, "--out", run, "--max-queries-per-user", "-1"],
         r"--max-queries-per-user"),
        ("pool size zero", ["run", "--task", task, "--out", run, "--pool-size", "0"], r"--pool-size"),
        ("pool size huge", ["run", "--task", task, "--out", run, "--pool-size", "100000"], r"--pool-size"),
        ("negative temperature", ["run", "--task", task, "--out", run, "--temperature", "-1"], r"--temperature"),
        ("split not summing to one", ["run", "--task", task, "--out", run, "--split", "0.5", "0.5", "0.5"],
         r"split: must be three positive shares"),
        ("split with an empty part", ["run", "--task", task, "--out", run, "--split", "1", "0", "0"],
         r"split: must be three positive shares"),
        ("too few users for the split", ["run", "--task", task, "--out", run, "--max-users", "2"],
         r"leaves .* empty \(users: .+\); every part needs a user"),
        ("unknown stage", ["run", "--task", task, "--out", run, "--stages", "dance"], r"unknown stages"),
        ("unknown backend", ["run", "--task", task, "--out", run, "--backend", "gpt"],
         r"--backend: Input should be 'llama-cpp'"),
        ("openai without a server", ["run", "--task", task, "--out", run, "--backend", "openai", "--stages",
                                     "sample"], r"needs a server address"),
        ("missing task folder", ["run", "--task", run + "/nowhere", "--out", run], r"questions.json: file not found"),
        ("go on with a folder that is no run", ["run", "--out", run], r"is not a run folder"),
        ("stage on a folder that is no run", ["rewards", run], r"is not a run folder"),
        ("generate with a huge budget", ["generate", run, "--task-name", "t", "--budget", "100000"], r"--budget"),
        ("generate with no budget", ["generate", run, "--task-name", "t", "--budget", "0"], r"--budget"),
        ("generate on a folder that is no run", ["generate", run, "--task-name", "t"], r"is not a run folder"),
        ("scores into a folder that is no run", ["scores", run, run + "/s.jsonl", "--task-name", "t", "--name", "x"],
         r"is not a run folder"),
        ("zero-shot on a folder that is no run", ["zero-shot", run], r"is not a run folder"),
        ("compare on a folder that is no run", ["compare", run], r"is not a run folder"),
        ("unknown command", ["dance"], r"No such command"),
    ]


CLI_IDS = [c[0] for c in _cli_cases("RUN")]


def test_version_is_the_installed_distribution_s(capsys):
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ttp {metadata.version('ttp')}"


@pytest.mark.parametrize("case", range(len(CLI_IDS)), ids=CLI_IDS)
def test_bad_command_lines_stop_with_one_line(tmp_path, capsys, case):
    run = str(tmp_path / "run")
    _, args, message = _cli_cases(run)[case]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("ttp: error: ") and "\n" not in err, err
    assert re.search(message, err), err
    assert not list(Path(run).glob("**/pools.jsonl"))


def _config_case(tmp_path, text: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    return run


good_config = {"tasks": [{"path": str(FIXTURE)}]}
CONFIG_CASES = [
    ("config not JSON", "{", r"config.json: not valid JSON"),
    ("config a list", "[]", r"expected a JSON object"),
    ("config unknown field", json.dumps({**good_config, "rm -rf": 1}),
     r"field 'rm -rf': Extra inputs are not permitted"),
    ("config task name climbs out", json.dumps({"tasks": [{"path": str(FIXTURE), "name": "../../x"}]}),
     r"cannot name a folder"),
    ("config negative pool", json.dumps({**good_config, "sampling": {"n": -3}}),
     r"field 'sampling.n': Input should be greater than or equal to 1 \(got -3\)"),
    ("config bad backend", json.dumps({**good_config, "backend": "os.system"}),
     r"field 'backend': Input should be 'llama-cpp'"),
    ("config bad engine", json.dumps({**good_config, "engine": {"backend": "vllm", "n_ctx": 3}}),
     r"field 'engine.n_ctx': Input should be greater than or equal to 256 \(got 3\)"),
    ("config engine not an object", json.dumps({**good_config, "engine": "llama-cpp"}),
     r"field 'engine': Input should be a valid dictionary"),
    ("config bad selector", json.dumps({**good_config, "controller_selector": "oracle/mean"}),
     r"names a reward model this run does not train"),
]


def test_a_config_file_with_the_engine_at_the_top_level_still_loads(tmp_path):
    from ttp.policy.registry import EngineConfig

    flat = {**good_config, "backend": "openai", "server_url": "http://127.0.0.1:9", "server_model": "m",
            "n_ctx": 4096, "ray_workers": 2}
    config = RunConfig.load(_config_case(tmp_path, json.dumps(flat)) / "config.json")
    assert config.engine == EngineConfig(backend="openai", n_ctx=4096, server_url="http://127.0.0.1:9",
                                         server_model="m", ray_workers=2)
    assert RunConfig.from_json(config.to_json()) == config and "backend" not in config.to_json()


@pytest.mark.parametrize("text, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_hand_edited_configs_are_refused(tmp_path, capsys, text, message):
    run = _config_case(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(run / "config.json")
    assert main(["resume", str(run)]) == 1
    assert re.search(message, capsys.readouterr().err)


# ---- pool files -------------------------------------------------------------------------------
class Replay(PolicyBackend):
    """Deterministic candidates per query; counts the prompts it was asked for."""

    name = "replay"

    def __init__(self):
        self.calls = 0

    def sample(self, prompt, params):
        self.calls += 1
        return [Completion(f"candidate {i} {params.seed}", -1.0 - i, 3) for i in range(params.n)]


def _valid_file(pep_task, path, n=3, queries=5):
    queries = list(pep_task.queries[:queries])
    sample_pools(queries, PromptBuilder(pep_task.layout, "plain"), Replay(), SamplingParams(n=n), path,
                 show_progress=False)
    return queries, path.read_bytes().splitlines(keepends=True)


POOL_DAMAGE = [
    ("corrupted middle line", lambda lines: lines[:2] + [b"{garbage\n"] + lines[3:], r"line 3 skipped"),
    ("corrupted last line", lambda lines: lines[:-1] + [b"not json at all\n"], r"line 5 skipped"),
    ("torn last line", lambda lines: lines[:-1] + [lines[-1][:20]], None),
    ("line is a JSON list", lambda lines: lines[:1] + [b"[1, 2]\n"] + lines[2:], r"line 2 skipped"),
    ("texts not strings", lambda lines: lines[:1] + [lines[1].replace(b'"texts": ["', b'"texts": [1, "')]
     + lines[2:], r"line 2 skipped, field 'texts'"),
    ("logprobs shorter than texts", lambda lines: lines[:3] + [re.sub(rb'"logprobs": \[[^\]]*\]', b'"logprobs": []',
                                                                      lines[3])] + lines[4:], r"line 4 skipped"),
    ("non-UTF-8 line", lambda lines: lines[:1] + [b'{"query_id": "\xff\xfe"}\n'] + lines[2:], r"line 2 skipped"),
    ("blank lines", lambda lines: lines[:2] + [b"\n", b"   \n"] + lines[2:], None),
    ("duplicate pool", lambda lines: lines + [lines[0]], r"line 6 repeats query"),
]


@pytest.mark.parametrize("damage, warning", [c[1:] for c in POOL_DAMAGE], ids=[c[0] for c in POOL_DAMAGE])
def test_damaged_pool_files_resume_to_complete_duplicate_free_pools(pep_task, tmp_path, damage, warning):
    path = tmp_path / "pools.jsonl"
    queries, lines = _valid_file(pep_task, path)
    path.write_bytes(b"".join(damage(list(lines))))
    backend = Replay()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pools = sample_pools(queries, PromptBuilder(pep_task.layout, "plain"), backend, SamplingParams(n=3), path,
                             show_progress=False)
    said = " ".join(str(w.message) for w in caught)
    if warning:
        assert re.search(warning, said), said
    assert [p["query_id"] for p in pools] == [q.id for q in queries]
    ids = [json.loads(line)["query_id"] for line in path.read_bytes().splitlines()]
    assert sorted(ids) == sorted(q.id for q in queries)          # complete, no duplicates, nothing else
    kept = [line for line in lines if line in path.read_bytes().splitlines(keepends=True)]
    assert len(kept) >= len(lines) - 1 - (backend.calls == 0)    # valid lines stay byte for byte
    assert backend.calls <= 1                                    # only the damaged pool is drawn again


@pytest.mark.parametrize("text", ['{"train": "x"}', "[1, 2]", '{"train": [], "validation": [], "test": [{}]}'])
def test_a_damaged_split_names_its_field_and_what_to_do(pep_task, tmp_path, text):
    from ttp.runs.config import TaskSpec
    from ttp.runs.pipeline import Pipeline

    pipeline = Pipeline(RunConfig(tasks=(TaskSpec(path=str(FIXTURE)),)), tmp_path / "run", show_progress=False)
    pipeline.split(pep_task)
    path = pipeline.folder.split(pep_task.name)
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"split.json: field '(train|validation|test)' is not a list of user ids; "
                                          r"delete it to split again"):
        pipeline.split(pep_task)


def test_a_damaged_pool_line_is_warned_about_once_when_a_run_resumes(pep_titles_dir, tmp_path):
    from ttp.runs.config import TaskSpec
    from ttp.runs.pipeline import Pipeline

    config = RunConfig(tasks=(TaskSpec(path=str(pep_titles_dir)),), policies=("plain",),
                       sampling=SamplingParams(n=3))
    pipeline = Pipeline(config, tmp_path / "run", show_progress=False)
    pipeline._backend = Replay()
    pipeline.run("sample")
    [(task, policy)] = pipeline.cells()
    path = pipeline.folder.pools(task.name, policy)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b"{garbage\n"] + lines[3:]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.run("sample")
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "line 3 skipped" in said[0], said
    assert len(read_pools(path)) == len(task.queries)


def test_a_pool_of_another_size_is_an_error_and_the_file_is_kept(pep_task, tmp_path):
    path = tmp_path / "pools.jsonl"
    queries, _ = _valid_file(pep_task, path, n=3)
    before = path.read_bytes()
    with pytest.raises(PoolFileError, match=r"line 1: query .* has 3 candidates, but this run samples n = 4"):
        sample_pools(queries, PromptBuilder(pep_task.layout, "plain"), Replay(), SamplingParams(n=4), path,
                     show_progress=False)
    assert path.read_bytes() == before
    assert len(read_pools(path)) == len(queries)


# ---- run folders are data ----------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "reward_models" / "pointwise"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelFileError, match="pickled model, which can run code"):
        RewardModel.load(model_dir)
    assert not marker.exists()


def test_a_crafted_embedding_cache_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "embeddings.npz"
    np.savez(path, keys=np.array([_Exploit(marker)], dtype=object), vectors=np.zeros((1, 384)))
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        EmbeddingCache(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.json").write_text('{"format": 99}'), "not a reward model this version"),
    (lambda d: (d / "model.json").write_text("{"), "model.json: not valid JSON"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"\x00" * 40), "not a reward model this version"),
    (lambda d: (d / "weights.safetensors").unlink(), "no saved reward model"),
], ids=["unknown format", "settings not JSON", "weights garbled", "weights missing"])
def test_damaged_reward_models_give_clear_errors(tmp_path, damage, message):
    X = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    model = RewardModel(kind="pointwise", max_epochs=2).fit(X, X[:, 0], np.repeat(np.arange(4), 8))
    model.save(tmp_path)
    damage(tmp_path)
    with pytest.raises((ModelFileError, ValueError), match=message):
        RewardModel.load(tmp_path)


@pytest.mark.parametrize("task, policy", [("../x", "plain"), ("/etc", "plain"), ("t", "../../p"), ("t", ".."),
                                          ("t", "a/b")])
def test_names_never_become_paths_outside_the_run(tmp_path, task, policy):
    with pytest.raises(ValueError, match="cannot name a folder"):
        RunFolder(tmp_path).pools(task, policy)


def test_a_second_writer_stops_at_once_and_names_the_holder(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    folder.config.write_text(json.dumps({"tasks": [{"path": str(FIXTURE)}]}))
    with folder.lock():
        with pytest.raises(RunInUse, match=f"in use by process {os.getpid()}"):
            with RunFolder(folder.root).lock():
                pass
        start = time.monotonic()
        assert main(["resume", str(folder.root)]) == 1
        assert time.monotonic() - start < 5
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    with folder.lock():       # released: the next writer gets it
        pass


# ---- over-long texts ---------------------------------------------------------------------------
def test_an_over_long_profile_item_still_makes_a_bounded_prompt(pep_task):
    query = pep_task.queries[0]
    huge = replace(query.profile[0], output="word " * 200_000)
    q = replace(query, profile=(huge, *query.profile[1:]))
    prompt = PromptBuilder(pep_task.layout, "personalized", k=len(q.profile))(q)
    assert len(prompt) < 12_000


def test_a_context_overflow_names_the_query(pep_task):
    class Small(PolicyBackend):
        def sample(self, prompt, params):
            raise ContextOverflow("a prompt of 9000 tokens exceeds the context of 8192")

    query = pep_task.queries[0]
    with pytest.raises(ContextOverflow, match=f"query '{query.id}' \\(user '{query.user}'\\): a prompt"):
        draw_pools(Small(), PromptBuilder(pep_task.layout, "plain"), SamplingParams(n=2), [query])


# ---- servers that misbehave (loopback only, bounded in time) -------------------------------------
class _Server:
    """A loopback HTTP server whose handler is given; counts requests and their bodies."""

    def __init__(self, handler_body):
        bodies, self.times = [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append(body)
                outer.times.append(time.monotonic())
                handler_body(self, body, len(bodies))

            def log_message(self, *args):
                pass

        self.bodies = bodies
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(handler, status, payload, headers=()):
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in headers:
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


def _choices(n, start=0):
    return {"choices": [{"text": f" title {start + i}", "logprobs": {"token_logprobs": [-0.5, -0.25]}}
                        for i in range(n)]}


@pytest.fixture
def server():
    servers = []

    def start(body):
        servers.append(_Server(body))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_a_trickling_server_hits_the_deadline(server):
    def trickle(handler, body, count):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(40):           # bounded: 40 bytes over 20 s at most
            try:
                handler.wfile.write(b" ")
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(0.5)

    s = server(trickle)
    backend = OpenAICompatibleBackend(s.url, "m", request_timeout=2, retries=0)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no complete answer within 2 s.*too slow.*--request-timeout"):
        backend.sample("p", SamplingParams(n=1))
    assert time.monotonic() - start < 4


def test_sample_many_keeps_requests_in_flight_across_queries_and_returns_pools_in_order():
    from slow_upstream import SlowUpstream

    s = SlowUpstream(0.3, text=lambda body, i: f" {body['prompt']} {i}")
    backend = OpenAICompatibleBackend(s.url, "m", max_concurrency=3, retries=0)
    prompts = [f"p{i}" for i in range(7)]
    start = time.monotonic()
    pools = backend.sample_many(prompts, [SamplingParams(n=2, seed=i) for i in range(7)])
    elapsed = time.monotonic() - start
    assert [[c.text for c in pool] for pool in pools] == [[f"p{i} 0", f"p{i} 1"] for i in range(7)]
    assert all(c.finish_reason == "stop" and c.logprob == -0.5 for pool in pools for c in pool)
    s.close()
    assert s.most == 3 and backend.chunk_size == 3           # bounded across queries, and used
    assert elapsed < 7 * 0.3                                  # one query at a time would take 2.1 s


def test_a_server_that_refuses_large_n_still_yields_full_pools(server):
    def slots(handler, body, count):
        if body["n"] > 2:
            _answer(handler, 400, {"error": {"message": f"n must be at most 2, got {body['n']}"}})
        else:
            _answer(handler, 200, _choices(body["n"], start=10 * count))

    s = server(slots)
    backend = OpenAICompatibleBackend(s.url, "m", retries=0)
    with pytest.warns(UserWarning, match=r"refused n = 8 .*at most 4") as said:
        pool = backend.sample("p", SamplingParams(n=8))
        second = backend.sample("p", SamplingParams(n=8, seed=1))
    assert len(pool) == 8 and len(second) == 8 and len({c.text for c in pool}) == 8
    assert len([w for w in said if "refused" in str(w.message)]) == 1     # said once
    # the rest of each pool in requests of the n the server takes (each evaluates the prompt once)
    assert sorted(b["n"] for b in s.bodies) == [2] * 8 + [4, 8] and not any("seed" in b for b in s.bodies)
    assert all(c.n_tokens == 2 and c.logprob == pytest.approx(-0.75) for c in pool)


def test_log_probabilities_in_llama_servers_content_shape_are_read(server):
    # llama.cpp's own server answers completions' logprobs as a list of tokens, not token_logprobs
    tokens = [{"id": 1, "token": " a", "logprob": -0.5, "bytes": [32, 97], "top_logprobs": []},
              {"id": 2, "token": " b", "logprob": -0.25, "bytes": [32, 98], "top_logprobs": []}]
    s = server(lambda h, body, count: _answer(h, 200, {"choices": [
        {"text": " a b", "index": 0, "logprobs": {"content": tokens}, "finish_reason": "length"}]}))
    [candidate] = OpenAICompatibleBackend(s.url, "m", retries=0).sample("p", SamplingParams(n=1))
    assert (candidate.text, candidate.n_tokens, candidate.finish_reason) == ("a b", 2, "length")
    assert candidate.logprob == pytest.approx(-0.75)


@pytest.mark.parametrize("logprobs", [{"content": ["-0.5", "-0.25"]}, {"content": [{"logprob": "x"}]},
                                      {"token_logprobs": 3}])
def test_malformed_log_probabilities_name_the_server(server, logprobs):
    s = server(lambda h, body, count: _answer(h, 200, {"choices": [
        {"text": " a b", "index": 0, "logprobs": logprobs, "finish_reason": "length"}]}))
    with pytest.raises(BackendError, match=rf"{s.url}.*neither the token_logprobs nor the content shape"):
        OpenAICompatibleBackend(s.url, "m", retries=0).sample("p", SamplingParams(n=1))


def test_retry_after_is_honoured(server):
    def busy_once(handler, body, count):
        if count == 1:
            _answer(handler, 503, {"error": "busy"}, headers=[("Retry-After", "1")])
        else:
            _answer(handler, 200, _choices(body["n"]))

    s = server(busy_once)
    pool = OpenAICompatibleBackend(s.url, "m", retries=2, backoff=0.01).sample("p", SamplingParams(n=2))
    assert len(pool) == 2 and s.times[1] - s.times[0] >= 0.95


@pytest.mark.parametrize("status", [400, 401, 404, 422, 500])
def test_deterministic_errors_are_not_retried(server, status):
    s = server(lambda h, body, count: _answer(h, status, {"error": "no"}))
    with pytest.raises(BackendError, match=f"refused the request with HTTP {status}"):
        OpenAICompatibleBackend(s.url, "m", retries=3, backoff=0.01).sample("p", SamplingParams(n=1))
    assert len(s.bodies) == 1


def test_unreachable_slow_and_refused_are_told_apart(server):
    with socket_closed() as url:
        with pytest.raises(BackendError, match="cannot connect.*Is the server running"):
            OpenAICompatibleBackend(url, "m", retries=1, backoff=0.01).sample("p", SamplingParams(n=1))
    s = server(lambda h, body, count: _answer(h, 503, {"error": "busy"}))
    with pytest.raises(BackendError, match="HTTP 503.*overloaded"):
        OpenAICompatibleBackend(s.url, "m", retries=1, backoff=0.01).sample("p", SamplingParams(n=1))


class socket_closed:
    """A loopback address where nothing listens."""

    def __enter__(self):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __exit__(self, *exc):
        return False


def test_errors_are_one_line_unless_debug_is_asked(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(FileNotFoundError):
        main(["run", "--out", str(tmp_path), "--debug"])


def test_compare_refuses_hidden_states_a_server_cannot_give_before_changing_the_run(tmp_path, capsys,
                                                                                     pep_titles_dir):
    from ttp.runs.config import TaskSpec

    folder = RunFolder(tmp_path / "run")
    from ttp.policy.registry import EngineConfig

    config = RunConfig(tasks=(TaskSpec(path=str(pep_titles_dir)),),
                       engine=EngineConfig(backend="openai", server_url="http://127.0.0.1:9", server_model="m"))
    folder.root.mkdir()
    folder.config.write_text(json.dumps(config.to_json()))
    before = folder.config.read_bytes()
    # the run's configuration refuses it (exit 1), not the command line
    assert main(["compare", str(folder.root), "--family", "hidden_state"]) == 1
    said = capsys.readouterr().err
    assert "the hidden_state family needs a backend that can give the final hidden state" in said
    assert "(llama-cpp, transformers), and this run samples with openai" in said
    assert json.loads(folder.config.read_bytes()) == json.loads(before)
    assert main(["run", "--task", str(pep_titles_dir), "--family", "vibes", "--out", str(tmp_path / "x")]) == 2
    assert "families must include 'features'" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda rules: rules["pointwise"].update(rule="greedy"), "selector 'pointwise': field 'rule' is 'greedy'"),
    (lambda rules: rules["pointwise"].pop("kappa"), "selector 'pointwise': field 'kappa' is missing"),
    (lambda rules: rules["pointwise"].update(dataset_spread="wide"), "field 'dataset_spread' is 'wide', not a number"),
])
def test_a_damaged_online_rules_file_names_the_selector_the_field_and_the_command(tmp_path, damage, message):
    from ttp.files import DataFileError
    from ttp.runs.results import read_online_rules

    folder = RunFolder(tmp_path)
    rules = {"pointwise": {"rule": "expected_improvement", "prior_strength": 8.0, "kappa": 0.4, "dataset_spread": 0.1}}
    damage(rules)
    folder.online_rules("t", "personalized").parent.mkdir(parents=True)
    folder.online_rules("t", "personalized").write_text(json.dumps(rules))
    with pytest.raises(DataFileError, match=re.escape(message)) as caught:
        read_online_rules(folder, "t", "personalized")
    assert "online_rules.json" in str(caught.value) and "ttp allocate" in str(caught.value)


def test_an_unknown_stage_is_named_with_the_stages_there_are(pep_titles_dir, tmp_path):
    from ttp.runs.config import TaskSpec
    from ttp.runs.pipeline import Pipeline

    pipeline = Pipeline(RunConfig(tasks=(TaskSpec(path=str(pep_titles_dir)),)), tmp_path / "run", show_progress=False)
    with pytest.raises(ValueError, match="unknown stage 'dance'; the stages are sample, utilities, curves"):
        pipeline.run("dance")
