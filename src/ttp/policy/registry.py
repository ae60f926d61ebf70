"""The policy backends by name, ``BACKENDS``; ``EngineConfig``, the one typed description of an
engine that a run, ``ttp generate`` and ``ttp serve`` share, and from which ``ttp run``'s engine
options are made (``ttp.options``): a new engine setting is one field here.  ``make_backend``
builds one from plain arguments.  Each backend's module is imported only when chosen: vLLM,
transformers and the HTTP client are optional and slow to import."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, get_args

from pydantic import Field

from ttp.policy import PolicyBackend
from ttp.typed import Settings, flags

Backend = Literal["llama-cpp", "openai", "transformers", "vllm"]
BACKENDS = get_args(Backend)
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


def _passed(**engines: str) -> dict:
    """The engines a field is handed to, each with its argument's name there: ``_passed(vllm="dtype")``."""
    return {"engines": engines}


class EngineConfig(Settings):
    """Which engine samples, how it is reached, and how it uses a GPU; checked when built.  Each
    field is an option of ``ttp run`` with this help text."""

    backend: Backend = Field(
        "llama-cpp", description="the engine that samples: " + ", ".join(BACKENDS))
    # relative: read from the run folder (``located``)
    model_path: Optional[str] = Field(
        None, description="GGUF file or `ttp tune` folder (llama-cpp), GGUF file (transformers) or model folder "
        "(transformers, vllm); default: the embedded Gemma 3 270M GGUF", json_schema_extra=flags("--model"))
    n_ctx: int = Field(8192, ge=256, description="context window of the llama-cpp / vllm engine, tokens",
                       json_schema_extra=_passed(vllm="max_model_len"))
    server_url: Optional[str] = Field(
        None, description="openai backend: the OpenAI-compatible server, e.g. http://gpu-box:8000",
        json_schema_extra=flags("--server-url", "--upstream-url"))
    server_model: Optional[str] = Field(None, description="openai backend: the server's model name",
                                        json_schema_extra=flags("--server-model", "--upstream-model"))
    request_timeout: float = Field(300.0, gt=0, description="openai backend: overall deadline per request, s")
    server_concurrency: int = Field(8, ge=1, le=256, description="openai backend: requests in flight to the server",
                                    json_schema_extra=flags("--server-concurrency", "--upstream-concurrency"))
    dtype: Dtype = Field(
        "auto", description="transformers, vllm: weight type (auto: bfloat16 on a GPU, float32 on a CPU)",
        json_schema_extra=_passed(transformers="dtype", vllm="dtype"))
    chunk_size: Optional[int] = Field(
        None, ge=1, description="transformers, vllm, ray: queries whose pools one generate call draws together "
        "(default: the engine's: transformers 4 on a GPU and 1 on a CPU, vllm 64, ray actors 4)",
        json_schema_extra=_passed(transformers="chunk_size", vllm="chunk_size"))
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over",
                                      json_schema_extra=_passed(vllm="tensor_parallel_size"))
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="vllm: share of GPU memory it may take (default 0.85 on a GPU, 0.4 on a CPU)",
        json_schema_extra=_passed(vllm="gpu_memory_utilization"))
    max_num_seqs: Optional[int] = Field(None, ge=1, description="vllm: sequences decoded in one step at most "
                                        "(default: vLLM's)", json_schema_extra=_passed(vllm="max_num_seqs"))
    ray_workers: int = Field(0, ge=0, description="sample with this many Ray actors (0: in this process)")
    ray_address: Optional[str] = Field(None, description="address of a running Ray cluster (default: start one)")
    ray_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each Ray actor reserves (a fraction shares one)")
    ray_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each Ray actor reserves")

    def located(self, run_folder: str | Path) -> "EngineConfig":
        """The engine with a relative model path read from ``run_folder``: a matrix keeps its tuned
        models beside its runs that way, so the folder still runs after it is moved or copied."""
        if not self.model_path or Path(self.model_path).is_absolute():
            return self
        return self.model_copy(update={"model_path": str((Path(run_folder) / self.model_path).resolve())})

    def on_server(self, url: str, model: str | None, concurrency: int | None = None) -> "EngineConfig":
        """The same engine settings, sampling from an OpenAI-compatible server instead."""
        if not model:
            raise ValueError("a server address needs the served model's name too (--server-model)")
        return EngineConfig(**{**self.model_dump(), "backend": "openai", "server_url": url, "server_model": model,
                               "server_concurrency": concurrency or self.server_concurrency})

    def engine_args(self) -> dict:
        """The settings this backend's engine is handed (each field's ``_passed``), by their names
        there; one left unset (None) is left to the engine's default."""
        args = {}
        for name, field in type(self).model_fields.items():
            argument = (field.json_schema_extra or {}).get("engines", {}).get(self.backend)
            if argument is not None and getattr(self, name) is not None:
                args[argument] = getattr(self, name)
        return args

    def make(self, max_sequences: int = 16) -> PolicyBackend:
        """The backend, ready to ``sample`` pools of up to ``max_sequences`` candidates."""
        return make_backend(self.backend, self.model_path, self.server_url, self.server_model,
                            max_sequences=max_sequences, n_ctx=self.n_ctx, request_timeout=self.request_timeout,
                            max_concurrency=self.server_concurrency, **self.engine_args())

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
                 request_timeout: float = 300.0, max_concurrency: int = 8, **engine_args) -> PolicyBackend:
    """A backend ready to ``sample``: ``llama-cpp`` (default model: the embedded Gemma GGUF),
    ``openai`` (any OpenAI-compatible server), ``transformers`` or ``vllm`` (a local model, with
    ``engine_args``: ``EngineConfig.engine_args``)."""
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
    return engine(model_path, **engine_args)
