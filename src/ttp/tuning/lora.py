"""LoRA fine-tuning of the policy model on the CPU, resumable step by step.

The base is the GGUF the pipeline samples from, de-quantized into transformers (so the tuned
weights differ from the GGUF only by what training changed).  LoRA adapters (``peft``) sit on
the attention projections.  Each example is one sequence, prompt then target, with no padding;
the loss is the target tokens' mean negative log-likelihood, and the 262k-token LM head is
applied only at the target's positions, which is most of what makes a step cheap on 2 cores.

A checkpoint (adapter and AdamW state in safetensors, progress in JSON) is written atomically
every ``checkpoint_every`` optimizer steps; ``fit`` on the same folder and settings goes on
from the last one, and gives the weights an uninterrupted run gives.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pydantic import Field, model_validator

from ttp.files import read_json, write_bytes_atomic, write_json_atomic
from ttp.tuning.examples import Example
from ttp.typed import Settings

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoraConfig(Settings):
    """How the adapters are trained; each field is an option of ``ttp tune`` with this help text."""

    rank: int = Field(8, ge=1, description="LoRA rank")
    alpha: Optional[float] = Field(None, gt=0, description="LoRA scale (default: 2 x rank)")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW's, decaying linearly to 0")
    epochs: int = Field(1, ge=1, description="passes over the examples")
    accumulation: int = Field(8, ge=1, description="examples per optimizer step")
    max_prompt_tokens: int = Field(384, ge=16, description="a longer prompt keeps its end (the query and the "
                                   "output label)")
    checkpoint_every: int = Field(4, ge=1, description="optimizer steps between checkpoints")
    # torch's float32 sums follow the thread count: pinned, a tune reproduces
    threads: int = Field(2, ge=1, description="torch threads: the weights reproduce bitwise with the same seed "
                         "and threads")

    @model_validator(mode="before")
    @classmethod
    def _alpha_follows_rank(cls, data):
        if isinstance(data, dict) and data.get("alpha") is None:
            data = {**data, "alpha": 2.0 * data.get("rank", cls.model_fields["rank"].default)}
        return data


@dataclass
class FitProgress:
    """Each optimizer step's loss (nats per target token) and seconds, across resumes."""

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


class CheckpointMismatch(ValueError):
    """A folder holds a checkpoint of another training (other settings or examples)."""


class LoraTrainer:
    """``fit(examples, folder)`` trains the adapters; ``merged_weights()`` gives the tuned
    attention projections by GGUF-free name (``layers.{i}.self_attn.q_proj``)."""

    def __init__(self, base_folder: str | Path, config: LoraConfig = LoraConfig(), seed: int = 0,
                 device: str | None = None):
        import torch
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(base_folder)
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        self.base_weights = {name: module.weight.detach().clone() for name, module in _projections(base)}
        # float32 on a GPU too: a GGUF tune writes only what training changed, not a rounding to bfloat16
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        base.to(self.device)
        torch.manual_seed(seed)      # the adapters' initial weights
        self.model = get_peft_model(base, PeftLora(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                                   target_modules=list(TARGET_MODULES), bias="none"))
        self.adapters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.adapters, lr=config.learning_rate, weight_decay=0.0)

    def encode(self, example: Example) -> tuple[list[int], int]:
        """The tokens of prompt + target, as llama.cpp tokenizes a prompt and then samples, and
        the number of target tokens at the end."""
        prompt = self.tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        target = self.tokenizer(example.target, add_special_tokens=False)["input_ids"]
        return prompt[-self.config.max_prompt_tokens:] + target, len(target)

    def example_losses(self, examples: list[Example]) -> tuple[float, int]:
        """The summed target negative log-likelihood (nats) of ``examples`` and their target tokens,
        without gradients."""
        total, tokens = 0.0, 0
        self.model.eval()
        with self._torch.no_grad(), self._pinned_threads():
            for example in examples:
                loss, n = self._loss(example)
                total, tokens = total + float(loss), tokens + n
        return total, tokens

    def _loss(self, example: Example):
        torch = self._torch
        ids, n_target = self.encode(example)
        ids = torch.tensor([ids], device=self.device)
        logits = self.model(input_ids=ids, logits_to_keep=n_target + 1).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits.float(), ids[0, -n_target:], reduction="sum"), n_target

    def steps(self, n_examples: int) -> int:
        return math.ceil(n_examples * self.config.epochs / self.config.accumulation)

    def fit(self, examples: list[Example], folder: str | Path,
            on_step: Callable[[int, int, float], None] | None = None) -> FitProgress:
        """Train on ``examples`` (in their order, each epoch), resuming from ``folder``'s checkpoint.
        ``on_step(step, steps, loss)`` follows progress."""
        folder = Path(folder)
        schedule = [e for _ in range(self.config.epochs) for e in examples]
        steps = self.steps(len(examples))
        identity = {"config": self.config.model_dump(), "examples": [e.id for e in examples]}
        progress = self._resume(folder, identity)
        self.model.train()
        with self._pinned_threads():
            for step in range(len(progress.losses), steps):
                started = time.perf_counter()
                batch = schedule[step * self.config.accumulation:(step + 1) * self.config.accumulation]
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.learning_rate * (1 - step / steps)
                self.optimizer.zero_grad()
                n_tokens = sum(self.encode(e)[1] for e in batch)
                total = 0.0
                for example in batch:
                    loss, _ = self._loss(example)
                    (loss / n_tokens).backward()
                    total += float(loss.detach())
                self.optimizer.step()
                progress.losses.append(total / n_tokens)
                progress.seconds.append(time.perf_counter() - started)
                done = len(progress.losses)
                if done % self.config.checkpoint_every == 0 or done == steps:
                    self._save(folder, identity, progress)
                if on_step:
                    on_step(done, steps, progress.losses[-1])
        return progress

    @contextmanager
    def _pinned_threads(self):
        previous = self._torch.get_num_threads()
        self._torch.set_num_threads(self.config.threads)
        try:
            yield
        finally:
            self._torch.set_num_threads(previous)

    def _save(self, folder: Path, identity: dict, progress: FitProgress) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save

        state = self.optimizer.state_dict()
        moments = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
        write_bytes_atomic(folder / "adapter.safetensors", save(_on_cpu(get_peft_model_state_dict(self.model))))
        write_bytes_atomic(folder / "optimizer.safetensors", save(_on_cpu(moments)))
        write_json_atomic(folder / "progress.json", {**identity, **asdict(progress)})

    def _resume(self, folder: Path, identity: dict) -> FitProgress:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if not (folder / "progress.json").exists():
            return FitProgress()
        progress = read_json(folder / "progress.json")
        if {k: progress.get(k) for k in identity} != json.loads(json.dumps(identity)):
            raise CheckpointMismatch(f"{folder} holds a checkpoint of another training (other settings or "
                                     f"examples); pass another folder or delete that one")
        set_peft_model_state_dict(self.model, load_file(folder / "adapter.safetensors"))
        moments = load_file(folder / "optimizer.safetensors")
        state = self.optimizer.state_dict()
        for key, value in moments.items():
            index, name = key.split(".", 1)
            state["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(state)
        return FitProgress([float(x) for x in progress["losses"]], [float(x) for x in progress["seconds"]])

    def merged_weights(self) -> dict[str, "object"]:
        """Each adapted projection's weight with its adapter merged in (float32, ``(out, in)``)."""
        merged = self.model.merge_and_unload()
        return {name: module.weight.detach().cpu().clone() for name, module in _projections(merged)}


def _on_cpu(tensors: dict) -> dict:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def _projections(model):
    """``(layers.{i}.self_attn.{proj}, module)`` of every adapted projection."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGET_MODULES and hasattr(module, "weight"):
            yield name[name.index("layers."):], module
