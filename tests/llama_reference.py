"""llama.cpp's own evaluation of the embedded model, as references for TTP's teacher-forced
scoring: the same prompt and continuation decoded three ways by ``Llama.eval``.

  one    prompt + continuation in one decode
  two    the prompt, then the continuation as a second decode (what TTP does after its prompt cache)
  steps  the prompt, then the continuation one token per decode

llama.cpp's matrix kernels depend on how many tokens a decode holds, so the three differ in
the last digits of every logit; how far they differ on this CPU (``spread``) is the yardstick
for comparisons between paths that decode in different batches.  Used by the tests and by
``scripts/score_paths.py``."""
from __future__ import annotations

import numpy as np

WAYS = ("one", "two", "steps")


class LlamaReference:
    def __init__(self, n_ctx: int = 2048):
        import llama_cpp

        from ttp.policy.llama_cpp import default_model_path

        self.llm = llama_cpp.Llama(str(default_model_path()), n_ctx=n_ctx, logits_all=True, verbose=False)

    def tokens(self, text: str, prompt: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=prompt, special=prompt)

    def token_logprobs(self, prompt: str, continuation: str, way: str = "one") -> np.ndarray:
        """The log-probability of each token of ``continuation`` after ``prompt``."""
        head, tail = self.tokens(prompt, prompt=True), self.tokens(continuation)
        self.llm.reset()
        if way == "one":
            self.llm.eval(head + tail)
        elif way == "two":
            self.llm.eval(head)
            self.llm.eval(tail)
        elif way == "steps":
            self.llm.eval(head)
            for token in tail:
                self.llm.eval([token])
        else:
            raise ValueError(f"way must be one of {WAYS}, got {way!r}")
        logits = np.asarray(self.llm.scores[len(head) - 1:len(head) + len(tail) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return logits[np.arange(len(tail)), tail] - log_z

    def logprob(self, prompt: str, continuation: str, way: str = "one") -> float:
        return float(self.token_logprobs(prompt, continuation, way).sum())

    def spread(self, prompt: str, continuations: list[str]) -> float:
        """The largest difference, over ``continuations``, between llama.cpp's own sums decoded the
        three ways: how much batching alone moves a log-probability on this machine."""
        return max(np.ptp([self.logprob(prompt, c, way) for way in WAYS]) for c in continuations)
