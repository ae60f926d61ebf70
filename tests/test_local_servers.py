import subprocess
import sys

import pytest

from ttp.local_servers import free_port, wait_until_up


def test_a_server_that_answers_is_waited_for():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", proc, timeout_s=60)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_dies_is_reported_with_its_exit_code_and_error():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('no model at /nowhere.gguf')"],
                            stderr=subprocess.PIPE)
    with pytest.raises(RuntimeError, match=r"exited with code 1 before answering: no model at /nowhere\.gguf"):
        wait_until_up(f"http://127.0.0.1:{free_port()}/health", proc, timeout_s=60)


def test_a_silent_server_is_killed_at_the_deadline():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        wait_until_up(f"http://127.0.0.1:{free_port()}/health", proc, timeout_s=1)
    assert proc.poll() is not None
