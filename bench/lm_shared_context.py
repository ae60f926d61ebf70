"""The lm reward model's shared context against reading each candidate in full, side by side
in one run, on the embedded Gemma 3 270M.

For 6 pep-titles queries (``--task pep-abstracts``: 6 of its queries): the personalized prompt
(the user's 3 retrieved examples and the query) and 16 real outputs (gold outputs of other
queries).  Per pool of 16:
- scoring one by one: the whole model over context + candidate, once per candidate;
- scoring as a padded batch: the 16 context + candidate sequences in one pass;
- scoring shared: the lm model's path, the lower layers over the context once with its cache
  repeated for the candidates, then the tuned top layers the same way (``ttp.rewards.lm_backbone``);
- a training step without sharing: the padded batch through the whole model, backward through
  the tuned layers; with sharing: the top layers on the cached lower states, backward.
Prints seconds per pool and the ratios."""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _data import pep_task_dir

from ttp.rewards.lm import LMConfig, LMRewardModel, PoolTexts, Reading
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder, as_generated

QUERIES, M = 6, 16


def pools(task):
    rng = np.random.default_rng(0)
    golds = [q.gold for q in task.queries]
    prompt = PromptBuilder(task.layout, "personalized")
    for q in task.queries[:QUERIES]:
        yield prompt(q), [as_generated(golds[i]) for i in rng.choice(len(golds), M, replace=False)]


def seconds(work, items) -> float:
    work(items[0])                          # warm: first-call allocations
    start = time.perf_counter()
    for item in items:
        work(item)
    return (time.perf_counter() - start) / len(items)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("pep-titles", "pep-abstracts"), default="pep-titles")
    parser.add_argument("--data", type=Path, default=None, help="the task's folder (default: the one ttp derives)")
    args = parser.parse_args()
    task = load_task(pep_task_dir(args.task, args.data))
    items = list(pools(task))
    reading = Reading()
    backbone = reading.backbone()
    model = LMRewardModel(LMConfig(kind="bradley_terry", reading=reading))
    model.backbone_sha256_ = backbone.digest
    model.modules_ = model._new_modules(backbone)
    top, head = model.modules_["top"], model.modules_["head"]
    from transformers import AutoModel

    whole = AutoModel.from_pretrained(backbone.folder, dtype=backbone.dtype).eval()
    context_tokens = np.mean([len(backbone.tokens(c, cands)[0]) for c, cands in items])
    candidate_tokens = np.mean([np.mean([len(p) for p in backbone.tokens(c, cands)[1]]) for c, cands in items])

    def padded(context, candidates):
        ids, pieces = backbone.tokens(context, candidates)
        width = len(ids) + max(map(len, pieces))
        batch = torch.zeros((len(pieces), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for i, piece in enumerate(pieces):
            batch[i, :len(ids) + len(piece)] = torch.tensor(ids + piece)
            mask[i, :len(ids) + len(piece)] = 1
        return batch, mask

    def one_by_one(item):
        ids, pieces = backbone.tokens(*item)
        with torch.no_grad():
            for piece in pieces:
                whole(input_ids=torch.tensor([ids + piece]))

    def batched(item):
        with torch.no_grad():
            whole(**dict(zip(("input_ids", "attention_mask"), padded(*item))))

    def shared(item):
        model.predict(PoolTexts({"q": item[0]}, item[1], np.array(["q"] * len(item[1]))))

    tuned = {f"layers.{len(whole.layers) - reading.tuned_layers + i}" for i in range(reading.tuned_layers)}
    for name, parameter in whole.named_parameters():
        parameter.requires_grad_(any(name.startswith(t + ".") for t in tuned))

    def train_unshared(item):
        batch, mask = padded(*item)
        states = whole(input_ids=batch, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        head(states[torch.arange(len(last)), last]).sum().backward()

    encoded = [backbone.encode_pool(*item) for item in items]
    top.train()

    def train_shared(states):
        head(backbone.run_top(top, states)).sum().backward()

    rows = [("scoring, one by one", seconds(one_by_one, items)), ("scoring, padded batch", seconds(batched, items)),
            ("scoring, shared context (lm)", seconds(shared, items)),
            ("training step, padded batch", seconds(train_unshared, items)),
            ("training step, shared context on cached states (lm)", seconds(train_shared, encoded))]
    print(f"{args.task}, {QUERIES} pools of {M}: context {context_tokens:.0f} tokens, "
          f"candidates {candidate_tokens:.1f} tokens; "
          f"{reading.tuned_layers} of {len(whole.layers)} layers tuned; torch threads {torch.get_num_threads()}")
    print(f"{'path':<55}{'s per pool':>12}")
    for name, value in rows:
        print(f"{name:<55}{value:>12.3f}")
    print(f"scoring: shared context {rows[0][1] / rows[2][1]:.1f}x faster than one by one, "
          f"{rows[1][1] / rows[2][1]:.1f}x faster than a padded batch")
    print(f"training: shared context on cached states {rows[3][1] / rows[4][1]:.1f}x faster than a padded batch")


if __name__ == "__main__":
    main()
