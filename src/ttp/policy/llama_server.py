"""llama.cpp's own HTTP server (``make .venv/bin/llama-server``) on the embedded model, started
for a block of work and stopped after it: the OpenAI-compatible engine with several slots that
decode together, for benchmarks, tests and a one-machine scale-out.

    with llama_server(slots=32) as url:
        backend = OpenAICompatibleBackend(url, "gemma", max_concurrency=32)
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ttp.local_servers import free_port, wait_until_up


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
