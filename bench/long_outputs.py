"""Sampling cost of a long-form task beside a short one, side by side in one run on the embedded
model: pools of 16 for personalized pep-abstracts prompts (up to 160 new tokens) and for the
same queries' pep-titles prompts (up to 24), rounds alternating.  Prints seconds per pool,
tokens and candidates per second, and the abstracts' cost per pool as a multiple of the
titles'."""
import time

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend
from ttp.tasks.data import load_task
from ttp.tasks.peps import pep_task_dirs
from ttp.tasks.prompts import PromptBuilder

M, QUERIES, ROUNDS = 16, 4, 2
TOKENS = {"pep-titles": 24, "pep-abstracts": 160}


def main() -> None:
    dirs = pep_task_dirs()
    prompts = {}
    for name in TOKENS:
        task = load_task(dirs[name])
        prompts[name] = [PromptBuilder(task.layout, "personalized")(q) for q in task.queries[:QUERIES]]
    backend = LlamaCppBackend(n_ctx=8192, max_sequences=M, prompt_cache=False)
    backend.sample(prompts["pep-titles"][0], SamplingParams(n=M, max_tokens=8, seed=99))   # warm-up
    spent, tokens, pools = dict.fromkeys(TOKENS, 0.0), dict.fromkeys(TOKENS, 0), dict.fromkeys(TOKENS, 0)
    for r in range(ROUNDS):
        for name in (TOKENS if r % 2 == 0 else reversed(TOKENS)):
            for i, prompt in enumerate(prompts[name]):
                start = time.perf_counter()
                pool = backend.sample(prompt, SamplingParams(n=M, max_tokens=TOKENS[name], seed=10 * r + i))
                spent[name] += time.perf_counter() - start
                tokens[name] += sum(c.n_tokens for c in pool)
                pools[name] += 1
    print(f"{QUERIES} personalized prompts per task x {ROUNDS} rounds, pools of {M}, {backend.name}")
    for name in TOKENS:
        print(f"{name:14s} up to {TOKENS[name]:3d} tokens: {spent[name] / pools[name]:5.2f} s per pool, "
              f"{tokens[name] / spent[name]:6.1f} tokens/s, {M * pools[name] / spent[name]:5.2f} candidates/s, "
              f"{tokens[name] / (M * pools[name]):5.1f} tokens per candidate")
    ratio = (spent["pep-abstracts"] / pools["pep-abstracts"]) / (spent["pep-titles"] / pools["pep-titles"])
    print(f"a long-form pool costs {ratio:.1f}x a title pool")


if __name__ == "__main__":
    main()
