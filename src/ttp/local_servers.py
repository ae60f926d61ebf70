"""HTTP servers started as child processes on this machine (llama.cpp's server, ``ttp serve`` in
tests and benchmarks): a free port to give one, and the wait until it answers."""
from __future__ import annotations

import socket
import subprocess
import time

import httpx

STARTUP_S = 180
ERROR_TAIL = 2000            # characters of a dead server's error output worth showing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = STARTUP_S) -> None:
    """Returns once ``url`` answers 200. Raises if ``proc`` exits first (with its exit code and, when
    its stderr is a pipe, the end of what it wrote) or stays silent for ``timeout_s`` (then kills it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            said = proc.stderr.read().decode(errors="replace")[-ERROR_TAIL:].strip() if proc.stderr else ""
            raise RuntimeError(f"the server behind {url} exited with code {proc.returncode} before answering"
                               + (f": {said}" if said else ""))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the server behind {url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.3)
