"""API keys of `ttp serve`, without a server: the key file, scopes, the key life-cycle (expiry,
revocation, rotation, listing), the key file followed live, and the refusal to serve other
machines without keys."""
import json
import stat

import pytest

from ttp.cli import main
from ttp.files import DataFileError
from ttp.serve.auth import (
    KeyFile,
    KeyRefused,
    KeyRing,
    add_key,
    digest,
    list_keys,
    parse_expiry,
    revoke_key,
    rotate_key,
)


def test_a_key_is_stored_as_its_hash_and_found_by_its_bearer_header(tmp_path):
    path = tmp_path / "keys.json"
    app_key = add_key(path, "app", ["*"])
    alice = add_key(path, "alice", ["alice", "lab-*"])
    stored = path.read_text()
    assert app_key not in stored and alice not in stored and digest(alice) in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.load(path)
    assert ring.find(f"Bearer {alice}").name == "alice" and ring.find(f"Bearer {app_key}").every_user
    for refused in (None, alice, "Bearer ttp-wrong", "Bearer ", f"Basic {alice}", f"Bearer{alice}"):
        with pytest.raises(KeyRefused, match="a valid API key is required"):
            ring.find(refused)
    # RFC 7235: the scheme's case does not matter
    assert ring.find(f"bearer {alice}").name == ring.find(f"BEARER  {alice} ").name == "alice"
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
    ({"keys": [{"name": "a", "sha256": "0" * 64, "users": "*"}, {"name": "a", "sha256": "1" * 64, "users": "*"}]},
     "key 1 ('a'): the name is listed twice"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "users": "*", "expires": "tomorrow"}]},
     "key 0 ('a'): field 'expires' must be seconds since 1970"),
])
def test_a_damaged_key_file_names_the_key_and_the_field(tmp_path, records, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataFileError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        KeyRing.load(path)
    assert str(path) in str(caught.value)


def test_keys_add_prints_the_key_once_and_serve_refuses_other_machines_without_keys(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert main(["keys", "add", str(path), "--name", "app", "--users", "*"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("ttp-") and KeyRing.load(path).find(f"Bearer {key}").name == "app"
    assert main(["serve", str(tmp_path), "--task-name", "t", "--host", "0.0.0.0"]) == 2
    said = capsys.readouterr().err
    assert "no --api-keys" in said and "--insecure-no-auth" in said


def test_an_expired_or_revoked_key_is_refused_by_name_and_a_rotated_key_by_its_old_secret(tmp_path):
    path = tmp_path / "keys.json"
    soon = parse_expiry("1h", now=1000.0)
    assert soon == 1000.0 + 3600
    short = add_key(path, "short", ["alice"], expires=soon)
    ring = KeyRing.load(path)
    assert ring.find(f"Bearer {short}", now=soon - 1).name == "short"
    with pytest.raises(KeyRefused, match=r"this API key \(short\) is expired"):
        ring.find(f"Bearer {short}", now=soon)

    old = add_key(path, "app", ["*"])
    new = rotate_key(path, "app")
    ring = KeyRing.load(path)
    assert ring.find(f"Bearer {new}").name == "app" and ring.find(f"Bearer {new}").every_user
    with pytest.raises(KeyRefused, match="a valid API key is required"):
        ring.find(f"Bearer {old}")

    revoked = revoke_key(path, "app")
    with pytest.raises(KeyRefused, match=r"this API key \(app\) is revoked"):
        KeyRing.load(path).find(f"Bearer {new}")
    assert revoke_key(path, "app").revoked == revoked.revoked        # a second revoke changes nothing
    with pytest.raises(DataFileError, match="names are never reused"):
        add_key(path, "app", ["*"])                              # what it wrote stays attributable
    with pytest.raises(DataFileError, match="is revoked"):
        rotate_key(path, "app")
    with pytest.raises(DataFileError, match="no key named 'nobody'"):
        revoke_key(path, "nobody")
    assert [(k.name, k.state(1e12)) for k in list_keys(path)] == [("short", "expired"), ("app", "revoked")]


@pytest.mark.parametrize("text, message", [("yesterday", "a duration"), ("2001-01-01", "in the past")])
def test_a_bad_expiry_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_expiry(text)


def test_the_key_file_is_followed_and_a_damaged_one_keeps_the_last_good_keys(tmp_path, capsys):
    path = tmp_path / "keys.json"
    alice = add_key(path, "alice", ["alice"])
    followed = KeyFile(path)
    assert followed.find(f"Bearer {alice}").name == "alice"
    bob = add_key(path, "bob", ["bob"])                          # added while serving
    assert followed.find(f"Bearer {bob}").name == "bob"
    revoke_key(path, "alice")                                    # revoked while serving: the next call refuses
    with pytest.raises(KeyRefused, match="revoked"):
        followed.find(f"Bearer {alice}")
    path.write_text("{ not json")
    assert followed.find(f"Bearer {bob}").name == "bob" and "last good keys" in followed.problem
    assert "keys.json" in capsys.readouterr().err
    with pytest.raises(KeyRefused):
        followed.find(f"Bearer {alice}")                         # still revoked: the last good keys said so
