"""The language model under the ``lm`` reward model, split in two at ``tuned_layers`` from the
top: the frozen lower layers, run once per pool, and the top layers, which the reward model
tunes (``ttp.rewards.lm``).

Every candidate of a pool is read after the same context (the user's profile examples and the
query), so the context is encoded once per pool and its KV cache repeated for the pool's
candidates, which then run as one right-padded batch (``encode_pool``).  The lower layers'
output at every position is kept (``PoolStates``): training and scoring run only the top
layers, again sharing the context, and get what one pass of the whole model over context +
candidate gives, to float tolerance (tests/test_lm_reward.py).

transformers has no "run the top k layers on given states" entry point, so the split is made
here: the lower model is the loaded model with its top layers and final norm dropped, the top
model a copy of the config with ``tuned_layers`` layers, fed the lower states as
``inputs_embeds``.  Any decoder-only model folder whose base model takes ``inputs_embeds`` and
lists its layers in ``layers`` works (Gemma, Llama, Qwen, Mistral)."""
from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EMBEDDED = "embedded"    # the backbone's name in a saved model when it is the embedded Gemma


def backbone_folder(model: str | Path | None) -> Path:
    """The model folder to read: the embedded Gemma 3 270M (``None``) or a GGUF file, each
    de-quantized to float32 once; a ``ttp tune`` folder (its GGUF); or any model folder."""
    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.transformers_backend import float32_folder

    if model is None or str(model) == EMBEDDED:
        return float32_folder(default_model_path())
    path = Path(model)
    if path.is_dir() and (path / "config.json").exists():
        return path
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else [path] if path.suffix == ".gguf" else []
    if len(ggufs) == 1 and ggufs[0].exists():
        return float32_folder(ggufs[0])
    raise FileNotFoundError(f"--rm-model {model}: not a model folder (config.json and weights), a ttp tune "
                            f"folder or a GGUF file")


def _digest(folder: Path) -> str:
    """A hash of the folder's weights, so a saved reward model is never read on other weights."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def _device_and_dtype() -> tuple[str, torch.dtype]:
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def _cache_keyword(model: nn.Module) -> str:
    # transformers 5 renamed past_key_values to cache; both spellings are in the wild
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


@dataclass
class PoolStates:
    """The lower layers' output for one pool: the context's states and each candidate's."""

    context: torch.Tensor                # (context tokens, hidden)
    candidates: list[torch.Tensor]       # one (candidate tokens, hidden) per candidate


class Backbone:
    """A model folder split at ``tuned_layers`` from the top; ``encode_pool`` runs the lower part,
    ``new_top`` makes a fresh copy of the top part, ``run_top`` runs it on a pool."""

    def __init__(self, folder: Path, tuned_layers: int, max_context_tokens: int, max_candidate_tokens: int):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.folder, self.tuned_layers = Path(folder), tuned_layers
        self.max_context_tokens, self.max_candidate_tokens = max_context_tokens, max_candidate_tokens
        self.device, self.dtype = _device_and_dtype()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        model = AutoModel.from_pretrained(self.folder, dtype=self.dtype)
        model = getattr(model, "language_model", model)
        layers = model.config.num_hidden_layers
        if not 1 <= tuned_layers < layers:
            raise ValueError(f"tuned_layers must be between 1 and {layers - 1} for {self.folder.name}, "
                             f"got {tuned_layers}")
        cut = layers - tuned_layers
        self.top_config = copy.deepcopy(model.config)
        self.top_config.num_hidden_layers = tuned_layers
        self.top_config.vocab_size = 1           # fed states, never token ids
        self.top_state = {f"layers.{i}.{k}": v.clone() for i in range(tuned_layers)
                          for k, v in model.layers[cut + i].state_dict().items()}
        self.top_state.update({f"norm.{k}": v.clone() for k, v in model.norm.state_dict().items()})
        if getattr(model.config, "layer_types", None):
            self.top_config.layer_types = model.config.layer_types[cut:]
            model.config.layer_types = model.config.layer_types[:cut]
        model.layers = model.layers[:cut]
        model.config.num_hidden_layers = cut
        model.norm = nn.Identity()               # the top part applies the final norm
        self.lower = model.to(self.device).eval().requires_grad_(False)
        self.cache_keyword = _cache_keyword(model)
        self.digest = _digest(self.folder)
        self.hidden_size = model.config.hidden_size

    def new_top(self) -> nn.Module:
        """The top layers and final norm with the folder's weights, on the backbone's device."""
        from transformers import AutoModel

        top = AutoModel.from_config(self.top_config, dtype=self.dtype)
        missing, unexpected = top.load_state_dict(self.top_state, strict=False)
        if unexpected or any(not k.startswith("embed_tokens") for k in missing):
            raise ValueError(f"{self.folder}: cannot split this model's layers ({missing + unexpected})")
        return top.to(self.device)

    def tokens(self, context: str, candidates: list[str]) -> tuple[list[int], list[list[int]]]:
        """The context with the tokenizer's BOS, keeping its end; each candidate on its own, cut
        to ``max_candidate_tokens`` (its end of line kept, where the reading ends)."""
        ids = self.tokenizer(context).input_ids
        if len(ids) > self.max_context_tokens:
            ids = ids[:1] + ids[len(ids) - self.max_context_tokens + 1:]
        pieces = []
        for text in candidates:
            piece = self.tokenizer(text, add_special_tokens=False).input_ids or [self.tokenizer.eos_token_id]
            pieces.append(piece if len(piece) <= self.max_candidate_tokens
                          else piece[:self.max_candidate_tokens - 1] + piece[-1:])
        return ids, pieces

    def _run(self, model: nn.Module, context: torch.Tensor, candidates: list[torch.Tensor], feed: str):
        """One pass of ``model`` over the context, then over the candidates after its repeated
        cache; ``feed`` is ``input_ids`` or ``inputs_embeds``.  Returns the context's output and
        the candidates' padded output with their lengths."""
        first = model(**{feed: context[None].to(self.device)}, use_cache=True)
        cache = _cache_of(first)
        k, width, length = len(candidates), max(len(c) for c in candidates), len(context)
        cache.batch_repeat_interleave(k)
        shape = (k, width, *candidates[0].shape[1:])
        batch = torch.zeros(shape, dtype=candidates[0].dtype, device=self.device)
        lengths = torch.tensor([len(c) for c in candidates], device=self.device)
        for i, c in enumerate(candidates):
            batch[i, :len(c)] = c
        mask = torch.cat([torch.ones((k, length), dtype=torch.long, device=self.device),
                          (torch.arange(width, device=self.device)[None] < lengths[:, None]).long()], dim=1)
        positions = (length + torch.arange(width, device=self.device))[None].expand(k, width)
        out = model(**{feed: batch, self.cache_keyword: cache}, attention_mask=mask, position_ids=positions)
        return first.last_hidden_state[0], out.last_hidden_state, lengths

    def encode_pool(self, context: str, candidates: list[str]) -> PoolStates:
        """The lower layers' states of one pool: the context once, the candidates after it."""
        ids, pieces = self.tokens(context, candidates)
        with torch.no_grad():
            states, padded, lengths = self._run(self.lower, torch.tensor(ids),
                                                [torch.tensor(p) for p in pieces], "input_ids")
        return PoolStates(states.cpu(), [padded[i, :n].cpu() for i, n in enumerate(lengths.tolist())])

    def run_top(self, top: nn.Module, pool: PoolStates) -> torch.Tensor:
        """The top layers' state at each candidate's last token, float32: one row per candidate."""
        _, padded, lengths = self._run(top, pool.context, pool.candidates, "inputs_embeds")
        return padded[torch.arange(len(lengths), device=self.device), lengths - 1].float()
