"""llama.cpp's own HTTP server (``make .venv/bin/llama-server``) on the embedded model, started
for a block of work and stopped after it: the OpenAI-compatible engine with several slots that
decode together, for benchmarks, tests and a one-machine scale-out.

    with llama_server(slots=32) as url:
        backend = OpenAICompatibleBackend(url, "gemma", max_concurrency=32)
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = STARTUP_S) -> None:
    """Returns once ``url`` answers 200; kills ``proc`` and raises if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the server behind {url} did not start within {timeout_s:.0f} s")
        time.sleep(0.5)


def server_binary() -> Path:
    binary = Path(sys.executable).with_name("llama-server")
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is not built; make .venv/bin/llama-server builds it")
    return binary


@contextmanager
def llama_server(slots: int = 4, ctx_per_slot: int = 2048, threads: int = 2,
                 model: Path | None = None) -> Iterator[str]:
    """Yields the base URL of a llama-server with ``slots`` slots on ``model`` (the embedded
    Gemma by default). The slots share one context, so each gets ``ctx_per_slot`` tokens for
    its prompt and the candidates a request asks for."""
    from ttp.policy.llama_cpp import default_model_path

    port = free_port()
    proc = subprocess.Popen([str(server_binary()), "--model", str(model or default_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--parallel", str(slots),
                             "--ctx-size", str(ctx_per_slot * slots), "--threads", str(threads), "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
