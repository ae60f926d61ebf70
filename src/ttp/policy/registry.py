"""The policy backends by name, ``BACKENDS``, and ``make_backend`` to build one from plain
arguments.  Each backend's module is imported only when chosen: vLLM, transformers and the
HTTP client are optional and slow to import."""
from __future__ import annotations

from ttp.policy import PolicyBackend

BACKENDS = ("llama-cpp", "openai", "transformers", "vllm")


def make_backend(name: str, model_path: str | None = None, server_url: str | None = None,
                 server_model: str | None = None, max_sequences: int = 16, n_ctx: int = 8192,
                 request_timeout: float = 300.0) -> PolicyBackend:
    """A backend ready to ``sample``: ``llama-cpp`` (default model: the embedded Gemma GGUF),
    ``openai`` (any OpenAI-compatible server), ``transformers`` or ``vllm`` (a local model)."""
    if name == "llama-cpp":
        from ttp.policy.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(model_path, n_ctx=n_ctx, max_sequences=max(max_sequences, 1))
    if name == "openai":
        from ttp.policy.openai_server import OpenAICompatibleBackend

        if not (server_url and server_model):
            raise ValueError("the openai backend needs a server address and model name "
                             "(--server-url, --server-model)")
        return OpenAICompatibleBackend(server_url, server_model, request_timeout=request_timeout)
    if name in ("transformers", "vllm"):
        if not model_path:
            raise ValueError(f"the {name} backend needs a local model (--model): a folder or GGUF file")
        if name == "transformers":
            from ttp.policy.transformers_backend import TransformersBackend

            return TransformersBackend(model_path)
        from ttp.policy.vllm_backend import VLLMBackend

        return VLLMBackend(model_path, max_model_len=n_ctx)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
