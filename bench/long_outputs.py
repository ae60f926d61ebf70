"""Cost of a long-form task beside a short one, and of a tuned policy beside the base, side by
side in one run on the embedded model:

* sampling: pools of 16 for personalized pep-abstracts prompts (up to 160 new tokens) and for
  the same queries' pep-titles prompts (up to 24), rounds alternating; with ``--tuned DIR`` (a
  ``ttp tune`` folder) the title pools again with the tuned GGUF, in the same rounds;
* tuning: LoRA steps (8 examples each, ``ttp tune``'s defaults) on each task's examples.

Prints seconds per pool, tokens and candidates per second, seconds per tuning step and per
target token, and the ratios: abstracts to titles, tuned to base."""
import argparse
import tempfile
import time
from pathlib import Path

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend, default_model_path
from ttp.policy.transformers_backend import float32_folder
from ttp.tasks.data import load_task, split_users
from ttp.tasks.peps import pep_task_dirs
from ttp.tasks.prompts import PromptBuilder
from ttp.tuning import TuneConfig
from ttp.tuning.examples import training_examples
from ttp.tuning.lora import LoraConfig, LoraTrainer

M, QUERIES, ROUNDS, TUNE_STEPS = 16, 4, 2, 2
TOKENS = {"pep-titles": 24, "pep-abstracts": 160}


def sampling(tasks: dict, tuned: Path | None) -> None:
    prompts = {name: [PromptBuilder(task.layout, "personalized")(q) for q in task.queries[:QUERIES]]
               for name, task in tasks.items()}
    arms = {name: (None, name) for name in TOKENS}
    if tuned:
        arms["pep-titles, tuned"] = (tuned, "pep-titles")
    backends = {path: LlamaCppBackend(path, n_ctx=8192, max_sequences=M, prompt_cache=False)
                for path in {path for path, _ in arms.values()}}
    for backend in backends.values():
        backend.sample(prompts["pep-titles"][0], SamplingParams(n=M, max_tokens=8, seed=99))   # warm-up
    spent, tokens, pools = dict.fromkeys(arms, 0.0), dict.fromkeys(arms, 0), dict.fromkeys(arms, 0)
    for r in range(ROUNDS):
        for arm in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            path, name = arms[arm]
            for i, prompt in enumerate(prompts[name]):
                start = time.perf_counter()
                pool = backends[path].sample(prompt, SamplingParams(n=M, max_tokens=TOKENS[name], seed=10 * r + i))
                spent[arm] += time.perf_counter() - start
                tokens[arm] += sum(c.n_tokens for c in pool)
                pools[arm] += 1
    print(f"sampling: {QUERIES} personalized prompts per arm x {ROUNDS} rounds, pools of {M}")
    for arm in arms:
        print(f"  {arm:18s} up to {TOKENS[arms[arm][1]]:3d} tokens: {spent[arm] / pools[arm]:5.2f} s per pool, "
              f"{tokens[arm] / spent[arm]:6.1f} tokens/s, {M * pools[arm] / spent[arm]:5.2f} candidates/s, "
              f"{tokens[arm] / (M * pools[arm]):5.1f} tokens per candidate")

    def per_pool(arm: str) -> float:
        return spent[arm] / pools[arm]

    def speed(arm: str) -> float:
        return tokens[arm] / spent[arm]

    print(f"  a long-form pool costs {per_pool('pep-abstracts') / per_pool('pep-titles'):.1f}x a title pool")
    if tuned:
        print(f"  the tuned model: {speed('pep-titles, tuned'):.1f} tokens/s against the base's "
              f"{speed('pep-titles'):.1f} ({speed('pep-titles, tuned') / speed('pep-titles'):.2f}x)")
    for backend in backends.values():
        backend.close()


def tuning(tasks: dict) -> None:
    config, lora = TuneConfig(), LoraConfig()
    trainer = LoraTrainer(float32_folder(default_model_path()), lora)
    cost = {}
    for name, task in tasks.items():
        split = split_users(task.users, config.split, config.seed)
        examples = training_examples(task, split, config.items_per_user, config.seed)[:TUNE_STEPS * lora.accumulation]
        with tempfile.TemporaryDirectory() as folder:
            progress = trainer.fit(examples, folder)
        seconds, target = sum(progress.seconds), sum(trainer.encode(e)[1] for e in examples)
        cost[name] = seconds / len(progress.seconds)
        print(f"  {name:14s} {cost[name]:5.1f} s per step of {lora.accumulation} examples, "
              f"{1000 * seconds / target:5.1f} ms per target token ({target / len(examples):.0f} target tokens "
              f"per example); {config.max_examples} examples ({config.max_examples // lora.accumulation} steps): "
              f"{cost[name] * config.max_examples / lora.accumulation / 60:.1f} min")
    print(f"  a long-form step costs {cost['pep-abstracts'] / cost['pep-titles']:.1f}x a title step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", type=Path, default=Path("runs/matrix/models/PEP-titles-tuned"),
                        help="a ttp tune folder of pep-titles, sampled beside the base (skipped if absent)")
    args = parser.parse_args()
    tasks = {name: load_task(pep_task_dirs()[name]) for name in TOKENS}
    sampling(tasks, args.tuned if args.tuned.exists() else None)
    print(f"tuning: LoRA r = {LoraConfig().rank} on the attention projections, {TUNE_STEPS} steps per task")
    tuning(tasks)


if __name__ == "__main__":
    main()
