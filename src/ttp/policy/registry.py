"""The policy backends by name, ``BACKENDS``; ``EngineConfig``, the one typed description of an
engine that a run, ``ttp generate`` and ``ttp serve`` share; ``make_backend`` to build one from
plain arguments.  Each backend's module is imported only when chosen: vLLM, transformers and
the HTTP client are optional and slow to import."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ttp.policy import PolicyBackend

BACKENDS = ("llama-cpp", "openai", "transformers", "vllm")


@dataclass(frozen=True)
class EngineConfig:
    """Which engine samples, and how it is reached; checked when built."""

    backend: str = "llama-cpp"          # one of BACKENDS
    model_path: str | None = None       # llama-cpp: GGUF file (default: embedded Gemma); transformers, vllm: a model;
                                        # relative: read from the run folder (see ``located``)
    n_ctx: int = 8192                   # context of the llama-cpp / vllm engine, tokens
    server_url: str | None = None       # openai: e.g. http://127.0.0.1:8000
    server_model: str | None = None     # openai: the served model's name
    request_timeout: float = 300.0      # openai: overall deadline of one request, seconds
    server_concurrency: int = 8         # openai: requests in flight to the server
    ray_workers: int = 0                # > 0: sample a run's pools with that many Ray actors
    ray_address: str | None = None      # an existing Ray cluster (default: start one locally)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        checks = {"n_ctx": self.n_ctx >= 256, "request_timeout": self.request_timeout > 0,
                  "server_concurrency": self.server_concurrency >= 1, "ray_workers": self.ray_workers >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(f'{k} = {getattr(self, k)!r}' for k in bad)}")

    def located(self, run_folder: str | Path) -> "EngineConfig":
        """The engine with a relative model path read from ``run_folder``: a matrix keeps its tuned
        models beside its runs that way, so the folder still runs after it is moved or copied."""
        if not self.model_path or Path(self.model_path).is_absolute():
            return self
        return replace(self, model_path=str((Path(run_folder) / self.model_path).resolve()))

    def on_server(self, url: str, model: str | None, concurrency: int | None = None) -> "EngineConfig":
        """The same engine settings, sampling from an OpenAI-compatible server instead."""
        if not model:
            raise ValueError("a server address needs the served model's name too (--server-model)")
        return replace(self, backend="openai", server_url=url, server_model=model,
                       server_concurrency=concurrency or self.server_concurrency)

    def make(self, max_sequences: int = 16) -> PolicyBackend:
        """The backend, ready to ``sample`` pools of up to ``max_sequences`` candidates."""
        return make_backend(self.backend, self.model_path, self.server_url, self.server_model,
                            max_sequences=max_sequences, n_ctx=self.n_ctx, request_timeout=self.request_timeout,
                            max_concurrency=self.server_concurrency)

    @property
    def label(self) -> str:
        """What the policy is called in a saved note, known without building the engine (which
        loads the model)."""
        if self.backend == "openai":
            return f"openai:{self.server_model}"
        if self.backend == "llama-cpp":
            from ttp.policy.llama_cpp import model_file

            return f"llama.cpp:{model_file(self.model_path).name}"
        return f"{self.backend}:{Path(self.model_path).name}"


def backend_class(name: str) -> type[PolicyBackend]:
    """The class of a backend by name, its module imported now (each imports its engine only when built)."""
    if name == "llama-cpp":
        from ttp.policy.llama_cpp import LlamaCppBackend

        return LlamaCppBackend
    if name == "openai":
        from ttp.policy.openai_server import OpenAICompatibleBackend

        return OpenAICompatibleBackend
    if name == "transformers":
        from ttp.policy.transformers_backend import TransformersBackend

        return TransformersBackend
    if name == "vllm":
        from ttp.policy.vllm_backend import VLLMBackend

        return VLLMBackend
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


def backends_that_can(capability: str) -> list[str]:
    """The backends whose class declares ``capability`` (``ttp.policy.CAPABILITIES``)."""
    return [name for name in BACKENDS if capability in backend_class(name).capabilities]


def make_backend(name: str, model_path: str | None = None, server_url: str | None = None,
                 server_model: str | None = None, max_sequences: int = 16, n_ctx: int = 8192,
                 request_timeout: float = 300.0, max_concurrency: int = 8) -> PolicyBackend:
    """A backend ready to ``sample``: ``llama-cpp`` (default model: the embedded Gemma GGUF),
    ``openai`` (any OpenAI-compatible server), ``transformers`` or ``vllm`` (a local model)."""
    engine = backend_class(name)
    if name == "llama-cpp":
        return engine(model_path, n_ctx=n_ctx, max_sequences=max(max_sequences, 1))
    if name == "openai":
        if not (server_url and server_model):
            raise ValueError("the openai backend needs a server address and model name "
                             "(--server-url, --server-model)")
        return engine(server_url, server_model, request_timeout=request_timeout, max_concurrency=max_concurrency)
    if not model_path:
        raise ValueError(f"the {name} backend needs a local model (--model): a folder or GGUF file")
    return engine(model_path) if name == "transformers" else engine(model_path, max_model_len=n_ctx)
