"""A policy backend for any server speaking the OpenAI completions API: ``vllm serve``, the
llama.cpp server, text-generation-inference, hosted endpoints.

Candidates must be independent draws.  Some servers return identical samples when a request
with ``n > 1`` carries one seed, and some ignore ``n`` altogether, so a pool is asked for as
one request with ``n`` and **no** seed, and whatever is missing is topped up by single requests
that each carry a distinct seed derived from the pool's seed.  Requests run with bounded
concurrency, a timeout, and retries with exponential backoff on 429, 5xx and dropped
connections; a server that stays unreachable or answers garbage raises ``BackendError``.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx

from ttp.policy import Completion, SamplingParams, clean_completion

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(RuntimeError):
    """The server could not give a usable answer; finished pools on disk are unaffected."""


class OpenAICompatibleBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 4, backoff: float = 0.5, use_n: bool = True):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries, self.backoff, self.use_n = retries, backoff, use_n
        self.max_concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers,
                                    limits=httpx.Limits(max_connections=max_concurrency))
        self.name = f"openai:{self.base_url}:{model}"

    def close(self) -> None:
        self._client.close()

    def _post(self, body: dict) -> list[dict]:
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.post("/v1/completions", json=body)
            except (httpx.TransportError, httpx.TimeoutException) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise BackendError(f"{self.base_url}/v1/completions refused the request with HTTP "
                                   f"{response.status_code}: {response.text[:300]}")
            try:
                choices = response.json()["choices"]
                return [{"text": str(c["text"]), "logprobs": c.get("logprobs")} for c in choices]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise BackendError(f"{self.base_url}/v1/completions answered something that is not a "
                                   f"completions response ({type(err).__name__}: {err}); first bytes: "
                                   f"{response.text[:200]!r}") from None
        raise BackendError(f"{self.base_url} gave no usable answer after {self.retries + 1} tries; "
                           f"last error: {last}. Is the server running? Rerun to resume the pools.")

    def _body(self, prompt: str, params: SamplingParams, n: int, seed: int | None) -> dict:
        body = {"model": self.model, "prompt": prompt, "n": n, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens, "stop": list(params.stop),
                "logprobs": 1}
        if seed is not None:
            body["seed"] = seed
        return body

    @staticmethod
    def _completion(choice: dict, stop) -> Completion:
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        values = [lp for lp in logprobs if lp is not None]
        return Completion(clean_completion(choice["text"], stop),
                          float(sum(values)) if values else math.nan, len(logprobs))

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        choices = self._post(self._body(prompt, params, params.n, None))[: params.n] if self.use_n else []
        missing = params.n - len(choices)
        if missing > 0:
            seeds = [zlib.crc32(f"{params.seed}:{i}".encode()) for i in range(len(choices), params.n)]
            with ThreadPoolExecutor(self.max_concurrency) as pool:
                for extra in pool.map(lambda s: self._post(self._body(prompt, params, 1, s)), seeds):
                    if not extra:
                        raise BackendError(f"{self.base_url} returned no choices for a completion request")
                    choices.append(extra[0])
        return [self._completion(c, params.stop) for c in choices]
