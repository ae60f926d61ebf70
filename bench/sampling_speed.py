"""Shared-prompt batched sampling vs independent completions, side by side in one run.

One personalized pep-titles prompt; 16 candidates drawn (a) by the backend's shared path:
the prompt evaluated once, 16 sequences decoded together, and (b) as 16 independent
completions that each evaluate the prompt again.  Prints both times and their ratio
(goal: >= 3x).  Rounds alternate (a) and (b) so machine noise hits both alike."""
import time

from _data import pep_titles

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder

N, ROUNDS = 16, 3


def main():
    task = load_task(pep_titles(__doc__.splitlines()[0]))
    backend = LlamaCppBackend(n_ctx=4096, max_sequences=N)
    prompt = PromptBuilder(task.layout, "personalized")(task.queries[12])
    n_prompt = len(backend.llm.tokenize(prompt.encode(), special=True))
    params = SamplingParams(n=N, max_tokens=24)
    backend.sample(prompt, params.with_seed(99))  # warm-up
    shared = independent = 0.0
    tokens_shared = tokens_independent = 0
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        pool = backend.sample(prompt, params.with_seed(r))
        shared += time.perf_counter() - t0
        tokens_shared += sum(c.n_tokens for c in pool)
        t0 = time.perf_counter()
        for i in range(N):
            one = backend.sample(prompt, SamplingParams(n=1, max_tokens=24, seed=1000 * r + i))
            tokens_independent += one[0].n_tokens
        independent += time.perf_counter() - t0
    print(f"prompt {n_prompt} tokens, {N} candidates, {ROUNDS} rounds, model {backend.name}")
    print(f"shared prompt, batched decode: {shared / ROUNDS:7.2f} s per pool "
          f"({tokens_shared / ROUNDS:.0f} new tokens)")
    print(f"{N} independent completions:    {independent / ROUNDS:7.2f} s per pool "
          f"({tokens_independent / ROUNDS:.0f} new tokens)")
    print(f"speed-up: {independent / shared:.1f}x")


if __name__ == "__main__":
    main()
