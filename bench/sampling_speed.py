"""Sampling cost on the embedded model, side by side in one run, on one personalized pep-titles
prompt: (a) one candidate, (b) a pool of 16 by the backend's shared path (the prompt evaluated
once, 16 sequences decoded together), (c) 16 independent completions that each evaluate the
prompt again, (d) teacher-forced scoring of the pool's 16 candidates under the same prompt (the
zero-shot scorers' work).  Prints each time, the pool's cost in candidates (b / a, goal:
<= 1.5), the shared path's speed-up (c / b, goal: >= 3) and scoring against sampling (d / b,
goal: <= 2).  Rounds alternate so machine noise hits all alike; every call evaluates its
prompt, as a new query's does.  The time inside llama.cpp's decode calls is counted apart from
the rest (the draw in NumPy, detokenizing, bookkeeping), so the pool's ratio can be read
against the floor that llama.cpp's own decode sets."""
import time

from _data import pep_titles

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder

N, ROUNDS = 16, 3


def main():
    task = load_task(pep_titles(__doc__.splitlines()[0]))
    backend = LlamaCppBackend(n_ctx=8192, max_sequences=64, prompt_cache=False)   # each call pays its prompt
    prompt = PromptBuilder(task.layout, "personalized")(task.queries[12])
    n_prompt = backend.count_tokens(prompt)
    params = SamplingParams(n=N, max_tokens=24)
    backend.sample(prompt, params.with_seed(99))  # warm-up
    in_decode = [0.0]
    decode = backend._decode

    def timed_decode(entries):
        start = time.perf_counter()
        decode(entries)
        in_decode[0] += time.perf_counter() - start

    backend._decode = timed_decode
    one = shared = independent = scoring = 0.0
    decode_one = decode_shared = 0.0
    tokens_one = tokens_shared = tokens_independent = 0
    for r in range(ROUNDS):
        t0, d0 = time.perf_counter(), in_decode[0]
        tokens_one += backend.sample(prompt, SamplingParams(n=1, max_tokens=24, seed=r))[0].n_tokens
        one += time.perf_counter() - t0
        decode_one += in_decode[0] - d0
        t0, d0 = time.perf_counter(), in_decode[0]
        pool = backend.sample(prompt, params.with_seed(r))
        shared += time.perf_counter() - t0
        decode_shared += in_decode[0] - d0
        tokens_shared += sum(c.n_tokens for c in pool)
        t0 = time.perf_counter()
        backend.score(prompt, [f" {c.text}\n" for c in pool])
        scoring += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(N):
            tokens_independent += backend.sample(prompt, SamplingParams(n=1, max_tokens=24, seed=1000 * r + i))[
                0].n_tokens
        independent += time.perf_counter() - t0
    print(f"prompt {n_prompt} tokens, {N} candidates, {ROUNDS} rounds, model {backend.name}")
    print(f"one candidate:                 {one / ROUNDS:7.2f} s ({tokens_one / ROUNDS:.0f} new tokens)")
    print(f"pool of {N}, shared prompt:      {shared / ROUNDS:7.2f} s ({tokens_shared / ROUNDS:.0f} new tokens)")
    print(f"{N} independent completions:    {independent / ROUNDS:7.2f} s "
          f"({tokens_independent / ROUNDS:.0f} new tokens)")
    print(f"scoring the pool's {N} candidates:  {scoring / ROUNDS:7.2f} s")
    print(f"  of which in llama.cpp's decode: one candidate {decode_one / ROUNDS:.2f} s, "
          f"pool {decode_shared / ROUNDS:.2f} s; the rest (draw, detokenize): {(one - decode_one) / ROUNDS:.2f} s "
          f"and {(shared - decode_shared) / ROUNDS:.2f} s")
    print(f"pool / one candidate: {shared / one:.2f}x (goal <= 1.5); "
          f"llama.cpp's decode alone: {decode_shared / decode_one:.2f}x")
    print(f"scoring / sampling a pool: {scoring / shared:.2f}x (goal <= 2)")
    print(f"shared-prompt speed-up over independent completions: {independent / shared:.1f}x (goal >= 3)")
    backend._decode = decode
    step_times = decode_step_times(backend, prompt)
    print("one decode step of k sequences (what batching requests together could save): " + ", ".join(
        f"k={k}: {t * 1000:.0f} ms ({t * 1000 / k:.1f} ms per sequence)" for k, t in step_times.items()))


def decode_step_times(backend, prompt, ks=(1, 4, 16, 32, 64), steps=5) -> dict[int, float]:
    """Seconds of one llama_decode that extends k sequences by one token each, after the prompt.
    If a step of 64 costs 4x a step of 16, decoding several requests' pools together saves
    nothing on this machine: the step is compute-bound already."""
    tokens = backend.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    out = {}
    for k in ks:
        if k > backend.max_sequences:
            continue
        backend._prompt_in_sequences(tokens, k)
        start = time.perf_counter()
        for step in range(steps):
            backend._decode([(tokens[-1], len(tokens) + step, s, True) for s in range(k)])
        out[k] = (time.perf_counter() - start) / steps
    return out


if __name__ == "__main__":
    main()
