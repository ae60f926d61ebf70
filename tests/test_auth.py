"""API keys and feedback limits of `ttp serve`, without a server: the key file, scopes, the
sliding-window limit, and the refusal to serve other machines without keys."""
import json
import stat

import pytest

from ttp.cli import main
from ttp.files import DataFileError
from ttp.serve.auth import KeyRing, RateLimit, add_key, digest


def test_a_key_is_stored_as_its_hash_and_found_by_its_bearer_header(tmp_path):
    path = tmp_path / "keys.json"
    app_key = add_key(path, "app", ["*"])
    alice = add_key(path, "alice", ["alice", "lab-*"])
    stored = path.read_text()
    assert app_key not in stored and alice not in stored and digest(alice) in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.load(path)
    assert ring.find(f"Bearer {alice}").name == "alice" and ring.find(f"Bearer {app_key}").every_user
    assert ring.find(None) is None and ring.find(alice) is None and ring.find("Bearer ttp-wrong") is None
    key = ring.find(f"Bearer {alice}")
    assert key.may_act_for("alice") and key.may_act_for("lab-7") and not key.may_act_for("bob")
    assert not key.may_act_for("alice2") and not key.may_act_for("xlab-7")
    with pytest.raises(DataFileError, match="a key named 'alice' exists"):
        add_key(path, "alice", ["x"])


@pytest.mark.parametrize("records, message", [
    ({"key": []}, "expected {\"keys\""),
    ({"keys": ["x"]}, "key 0 is not an object"),
    ({"keys": [{"name": "", "sha256": "0" * 64, "users": "*"}]}, "field 'name'"),
    ({"keys": [{"name": "a", "sha256": "not-hex", "users": "*"}]}, "key 0 ('a'): field 'sha256'"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "users": []}]}, "field 'users'"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "users": "*"}, {"name": "b", "sha256": "0" * 64, "users": "*"}]},
     "key 1 ('b'): the same key is listed twice"),
])
def test_a_damaged_key_file_names_the_key_and_the_field(tmp_path, records, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataFileError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        KeyRing.load(path)
    assert str(path) in str(caught.value)


def test_the_feedback_limit_is_a_sliding_minute_that_counts_only_what_it_lets_through():
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert limit.wait("user:a", "key:k") == 0 and limit.wait("user:a", "key:k") == 0
    assert limit.wait("user:a", "key:k") == pytest.approx(60)
    assert limit.wait("user:b", "key:k") == pytest.approx(60)    # the key is spent, whichever user
    now[0] = 30.0
    assert limit.wait("user:b", "key:j") == 0                    # refused above: b counted nothing
    now[0] = 60.0
    assert limit.wait("user:a", "key:k") == 0


def test_keys_add_prints_the_key_once_and_serve_refuses_other_machines_without_keys(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert main(["keys", "add", str(path), "--name", "app", "--users", "*"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("ttp-") and KeyRing.load(path).find(f"Bearer {key}").name == "app"
    assert main(["serve", str(tmp_path), "--task", "t", "--host", "0.0.0.0"]) == 2
    said = capsys.readouterr().err
    assert "no --api-keys" in said and "--insecure-no-auth" in said
