"""Fine-tuning a second policy model: ``tune(task, out, config)`` writes a model folder that the
pipeline samples like the embedded one.

From a GGUF (the embedded Gemma by default) the folder holds ``<name>.gguf``, the base GGUF
with the tuned attention projections (see ``gguf_export``), which llama.cpp samples
(``ttp run --model DIR``).  From a model folder (``base_model`` holding ``config.json``) it holds
the merged weights as a model folder, which transformers and vLLM sample
(``ttp run --backend transformers --model-path DIR``).  Either way also a model card
(``README.md``), ``tune.json`` (the settings, the data, the loss curve, the validation loss
before and after, and the GGUF check where there is a GGUF), ``loss.png`` and ``checkpoint/``
(the LoRA adapter and the optimizer state a resumed tune goes on from).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydantic import Field, field_validator

from ttp.files import read_json, write_bytes_atomic, write_json_atomic
from ttp.policy.transformers_backend import float32_folder
from ttp.tasks.data import Task, split_users
from ttp.tasks.prompts import PromptBuilder
from ttp.tuning.examples import TUNE_PROMPT, Example, example, training_examples
from ttp.tuning.lora import LoraConfig
from ttp.typed import Settings, Split

CHECK_PROMPTS = 8           # validation prompts the GGUF's next-token distribution is checked on
VALIDATION_EXAMPLES = 24    # validation users' queries whose loss is reported before and after


class TuneConfig(Settings):
    """What a tune learns from; ``split`` and ``seed`` must be the run's, so that its held-out
    users are the ones kept out.  Each field but ``lora`` (``LoraConfig``'s are its own) and
    ``base_model`` is an option of ``ttp tune`` with this help text."""

    items_per_user: int = Field(4, ge=1, description="profile items per user")
    max_examples: Optional[int] = Field(256, ge=1, description="examples in all (the first of a seeded order); "
                                        "0: all")
    split: Split = Field((0.45, 0.15, 0.4), description="the run's train, validation, test shares of users: its "
                         "held-out users give no gold")
    seed: int = Field(0, description="the run's seed (its user split) and the examples' order")
    base_model: Optional[str] = None             # a GGUF file or a model folder (default: the embedded Gemma)
    lora: LoraConfig = LoraConfig()

    @field_validator("max_examples", mode="before")
    @classmethod
    def _zero_is_all(cls, value):
        return None if value == 0 else value


@dataclass(frozen=True)
class TuneResult:
    model: Path              # the tuned GGUF
    record: dict             # tune.json


def users_with_learnt_golds(model_path: str | Path | None) -> set[str]:
    """The users whose query golds a tuned model (a ``ttp tune`` folder or the GGUF in one) was
    trained on; none for any other model."""
    if not model_path:
        return set()
    path = Path(model_path)
    record = (path if path.is_dir() else path.parent) / "tune.json"
    return set(read_json(record).get("query_users", [])) if record.exists() else set()


def validation_examples(task: Task, config: TuneConfig) -> list[Example]:
    """Validation users' queries with their golds: never trained on, only measured."""
    split = split_users(task.users, config.split, config.seed)
    builder = PromptBuilder(task.layout, TUNE_PROMPT)
    queries = [q for q in task.queries if q.user in split.validation][:VALIDATION_EXAMPLES]
    return [example(q, builder) for q in queries]


def tune(task: Task, out: str | Path, config: TuneConfig = TuneConfig(),
         on_step: Callable[[int, int, float], None] | None = None) -> TuneResult:
    """Fine-tune the base on ``task``'s examples into the folder ``out``, resuming a tune left
    there; a finished folder with the same settings is returned as it is."""
    from filelock import FileLock, Timeout

    from ttp.policy.llama_cpp import model_file
    from ttp.tuning.gguf_export import distribution_check, write_tuned_gguf
    from ttp.tuning.lora import LoraTrainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"task": task.name, **config.model_dump(mode="json")}
    lock = FileLock(out / ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(f"another ttp tune is writing {out}") from None
    try:
        done = out / "tune.json"
        from_folder = bool(config.base_model) and (Path(config.base_model) / "config.json").exists()
        if done.exists() and read_json(done).get("settings") == settings:
            return TuneResult(out if from_folder else model_file(out), read_json(done))
        base_gguf = None if from_folder else model_file(config.base_model)
        base_folder = Path(config.base_model) if from_folder else float32_folder(base_gguf)
        split = split_users(task.users, config.split, config.seed)
        examples = training_examples(task, split, config.items_per_user, config.seed)[:config.max_examples]
        validation = validation_examples(task, config)
        trainer = LoraTrainer(base_folder, config.lora, config.seed)
        before = trainer.example_losses(validation)
        progress = trainer.fit(examples, out / "checkpoint", on_step)
        after = trainer.example_losses(validation)
        if from_folder:
            model, check = out, None
            trainer.model.merge_and_unload().save_pretrained(out)
            trainer.tokenizer.save_pretrained(out)
        else:
            check_prompts = [e.prompt for e in validation[:CHECK_PROMPTS]]
            hf_tuned = _hf_logprobs(trainer.model, trainer.tokenizer, check_prompts)
            with trainer.model.disable_adapter():
                hf_base = _hf_logprobs(trainer.model, trainer.tokenizer, check_prompts)
            model = write_tuned_gguf(base_gguf, trainer.base_weights, trainer.merged_weights(),
                                     out / f"{out.name}.gguf")
            check = distribution_check(hf_base, hf_tuned, base_gguf, model, check_prompts)
        record = {
            "settings": settings,
            "base_model": base_folder.name if from_folder else base_gguf.name,
            "examples": {"profile items": sum(e.kind == "profile" for e in examples),
                         "training queries": sum(e.kind == "query" for e in examples)},
            "query_users": sorted({e.user for e in examples if e.kind == "query"}),
            "held_out_users": sorted(split.validation + split.test),
            "target_tokens": sum(trainer.encode(e)[1] for e in examples),
            "steps": len(progress.losses), "losses": progress.losses,
            "train_seconds": round(sum(progress.seconds), 1), "device": trainer.device,
            "validation_loss": {"before": before[0] / max(before[1], 1), "after": after[0] / max(after[1], 1),
                                "queries": len(validation), "target_tokens": before[1]},
            "gguf_check": check,
        }
        _plot_losses(progress.losses, out / "loss.png")
        write_bytes_atomic(out / "README.md", model_card(out.name, record).encode("utf-8"))
        write_json_atomic(done, record)      # last: a folder with tune.json is a finished tune
        return TuneResult(model, record)
    finally:
        lock.release()


def _hf_logprobs(model, tokenizer, prompts: list[str]) -> np.ndarray:
    import torch

    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].double()
            rows.append(torch.log_softmax(logits, dim=-1).cpu().numpy())
    return np.stack(rows)


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("target loss (nats / token)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def model_card(name: str, record: dict) -> str:
    s, v, c, lora = record["settings"], record["validation_loss"], record["gguf_check"], record["settings"]["lora"]
    n = record["examples"]
    runs = ("merged into a\nGGUF that llama.cpp runs as it runs the base: `ttp run --model` this folder." if c else
            "merged into this\nmodel folder, which transformers and vLLM run: `ttp run --backend transformers "
            "--model-path` this folder.")
    gguf = "" if c is None else f"""
## GGUF check
Mean KL of the next-token distribution on {c['prompts']} validation prompts: tuned GGUF vs tuned
weights {c['kl_tuned_gguf_vs_tuned_weights']:.4f}, base GGUF vs base weights {c['kl_base_gguf_vs_base_weights']:.4f}
(llama.cpp's own arithmetic), tuned weights vs base weights {c['kl_tuned_weights_vs_base_weights']:.4f}
(what tuning changed). Top token agreement: {c['top_token_agreement']:.2f}.
"""
    return f"""# {name}

A LoRA fine-tune of {record['base_model']} for the task **{s['task']}**, {runs}

## Data
{n['profile items']} profile items (up to {s['items_per_user']} per user, every user's: a profile is an input
of the task) and {n['training queries']} queries of the {len(record['query_users'])} training users, in the
`{TUNE_PROMPT}` prompt; {record['target_tokens']} target tokens. The {len(record['held_out_users'])} validation
and test users of the split {tuple(s['split'])} (seed {s['seed']}) gave no query gold, and no item that is the
record of one of their queries entered.

## Training
LoRA r = {lora['rank']}, alpha = {lora['alpha']} on the attention projections; AdamW, learning rate
{lora['learning_rate']} decaying linearly to 0; {lora['accumulation']} examples per step, {lora['epochs']} epoch(s):
{record['steps']} steps in {record['train_seconds'] / 60:.1f} min on this machine's {record.get('device', 'cpu')}, on
{lora['threads']} torch thread(s) (on a CPU, with the same seed and threads the weights reproduce
bitwise). Loss (nats per target token): {record['losses'][0]:.3f} at the first step,
{record['losses'][-1]:.3f} at the last (`loss.png`).

Validation users' golds ({v['queries']} queries, {v['target_tokens']} tokens, never trained on):
**{v['before']:.3f} nats per token before, {v['after']:.3f} after**.
{gguf}
## Licence
The weights derive from the base model and fall under its licence: for Gemma 3, the
Gemma Terms of Use. The training text is
the PEP records shipped with ttp (public domain / CC0) where the task is a PEP task, else the
task's own data under its licence.
"""
