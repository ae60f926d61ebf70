"""A reward model served elsewhere (``ttp.rewards.remote``): what it sends, what it accepts back,
the one-line errors of a bad answer, and the checkpoint that lets an interrupted scoring resume.
The end-to-end path, against a second `ttp serve`, is in test_serve."""
import http.server
import json
import threading

import numpy as np
import pytest

from ttp.rewards.remote import RemoteScoreError, RemoteScorer, append_checkpoint, read_checkpoint


@pytest.fixture
def endpoint():
    """A loopback server that records each body and answers with ``answer[0]`` (status, JSON)."""
    seen, answer = [], [(200, {})]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.path, self.headers.get("Authorization"),
                         json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            status, body = answer[0]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen, answer
    httpd.shutdown()
    httpd.server_close()


def test_it_sends_the_user_input_and_candidates_and_reads_scores_in_index_order(endpoint):
    url, seen, answer = endpoint
    answer[0] = (200, {"data": [{"index": 1, "score": 0.5, "mean": 0.4, "sd": 0.1},
                                {"index": 0, "score": -1, "mean": -1, "sd": None}]})
    score, mean, sd = RemoteScorer(f"{url}/v1", "secret")("u", "an input", ["a", "b"], [-1.0, -2.5], [1, 3])
    assert score.tolist() == [-1, 0.5] and mean.tolist() == [-1, 0.4] and np.isnan(sd[0]) and sd[1] == 0.1
    path, auth, body = seen[0]
    assert path == "/v1/ttp/score" and auth == "Bearer secret"
    assert body == {"user": "u", "input": "an input", "candidates": [
        {"text": "a", "logprob": -1.0, "n_tokens": 1}, {"text": "b", "logprob": -2.5, "n_tokens": 3}]}
    answer[0] = (200, {"data": [{"index": 0, "score": 2.0}]})    # a score alone is also its mean
    score, mean, sd = RemoteScorer(url)("u", "x", ["a"], [float("nan")], [0])    # no log-probability: the text
    assert score.tolist() == mean.tolist() == [2.0] and np.isnan(sd[0])
    assert seen[1][1] is None and seen[1][2]["candidates"] == [{"text": "a"}]


@pytest.mark.parametrize("status, body, message", [
    (403, {"error": {"message": "this API key (alice) may not act for that user"}}, "HTTP 403: this API key"),
    (200, {"scores": []}, "no 'data' list"),
    (200, {"data": [{"index": 0, "score": 1}]}, "must list 2 scores"),
    (200, {"data": [{"index": 0, "score": 1}, {"index": 2, "score": 1}]}, "data[1]: field 'index' must be 1"),
    (200, {"data": [{"index": 0, "score": 1}, {"index": 1, "score": "high"}]}, "data[1]: field 'score'"),
], ids=["refused", "no data", "too few", "bad index", "not a number"])
def test_a_bad_answer_is_one_line_naming_the_url_and_field(endpoint, status, body, message):
    url, _, answer = endpoint
    answer[0] = (status, body)
    with pytest.raises(RemoteScoreError, match="ttp/score") as caught:
        RemoteScorer(url)("u", "x", ["a", "b"], [-1.0, -1.0], [1, 1])
    assert message in str(caught.value)


def test_an_unreachable_or_malformed_url_is_named():
    with pytest.raises(ValueError, match="http://"):
        RemoteScorer("localhost:9")
    with pytest.raises(RemoteScoreError, match="127.0.0.1:9/v1/ttp/score: ConnectError"):
        RemoteScorer("http://127.0.0.1:9", timeout=2)("u", "x", ["a"], [-1.0], [1])


def test_a_checkpoint_cut_short_by_a_kill_keeps_its_whole_lines(tmp_path):
    path = tmp_path / "remote.partial.jsonl"
    with open(path, "a") as out:
        first = append_checkpoint(out, "q1", [0, 1], np.array([0.1, 0.2]), np.array([np.nan, 0.3]))
        append_checkpoint(out, "q2", [0], np.array([0.5]), np.array([0.1]))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])                      # the last line torn
    assert read_checkpoint(path) == {"q1": first} and first["sd"] == [None, 0.3]
    assert path.read_bytes() == whole.splitlines(keepends=True)[0]    # rewritten: the next append starts a line
    assert read_checkpoint(tmp_path / "missing.jsonl") == {}
