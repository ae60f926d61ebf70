"""Is ``ttp tune`` bitwise reproducible?  Three short trainings of the matrix's recipe (its
seed, split and settings) on the first examples of pep-titles: two with 2 threads, one with 1.
Prints each one's losses and the largest difference of the tuned projections between them,
beside the largest change that tuning made.

    python scripts/tune_reproducibility.py [--task PEP_TITLES] [--examples 16]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ttp.policy.llama_cpp import default_model_path
from ttp.policy.transformers_backend import float32_folder
from ttp.tasks.data import load_task, split_users
from ttp.tasks.peps import pep_task_dirs
from ttp.tuning import TuneConfig
from ttp.tuning.examples import training_examples
from ttp.tuning.lora import LoraConfig, LoraTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, default=None, help="a task folder (default: the pep-titles ttp derives)")
    parser.add_argument("--examples", type=int, default=16, help="examples, 8 per step")
    args = parser.parse_args()
    task = load_task(args.task or pep_task_dirs()["pep-titles"])
    config = TuneConfig()
    split = split_users(task.users, config.split, config.seed)
    examples = training_examples(task, split, config.items_per_user, config.seed)[:args.examples]
    base = float32_folder(default_model_path())
    tuned = {}
    for name, threads in (("first, 2 threads", 2), ("second, 2 threads", 2), ("1 thread", 1)):
        trainer = LoraTrainer(base, LoraConfig(threads=threads), config.seed)
        with tempfile.TemporaryDirectory() as folder:
            losses = trainer.fit(examples, Path(folder)).losses
        tuned[name] = trainer.merged_weights()
        print(f"{name}: losses {losses}", flush=True)
    change = max(float((w - trainer.base_weights[k]).abs().max()) for k, w in tuned["1 thread"].items())
    first = tuned.pop("first, 2 threads")
    for name, weights in tuned.items():
        diff = max(float((first[k] - w).abs().max()) for k, w in weights.items())
        print(f"first, 2 threads vs {name}: largest weight difference {diff:.3g} "
              f"(largest change from tuning {change:.3g})")


if __name__ == "__main__":
    main()
