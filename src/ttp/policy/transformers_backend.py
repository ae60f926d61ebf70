"""Hugging Face transformers backend: a local model directory (or a GGUF file, which
transformers de-quantizes on load), ``M`` sequences sampled in one batched ``generate``.
``export_model_folder`` writes a GGUF out as a regular model folder, which vLLM and other
engines load, so the embedded default runs on them without a download."""
from __future__ import annotations

from pathlib import Path

from ttp.policy import COUNT_TOKENS, HIDDEN_STATES, SCORE, Completion, PolicyBackend, SamplingParams, cut_at_stop


class TransformersBackend(PolicyBackend):
    """``device``: ``cuda`` where torch sees a GPU, else ``cpu``; ``dtype``: bfloat16 on a GPU,
    float32 on a CPU.  ``chunk_size``: queries whose pools one ``generate`` call draws together.
    On a GPU a step of many pools' sequences costs little more than a step of one pool's
    (bench/gpu_batching.py on an H200: 4 queries per call draw 3.5x the candidates per second
    of one, 16 draw 9.1x), so the default there is 4, which holds the kept logits of 64
    sequences; on a CPU one pool already fills the cores and the default is 1.  A chunk draws
    from one torch generator seeded with its first query's seed, so a pool drawn in a chunk
    differs from the same query's pool drawn alone.

    Beyond sampling it scores given texts and gives their final hidden states (the
    ``hidden_state`` reward model's input), as the llama.cpp backend does: the prompt tokenized with
    the tokenizer's BOS and each continuation on its own, then one forward pass over every
    prompt + continuation of a pool, right-padded.  The prompt is read once per continuation here
    (no shared KV cache): a pool of 16 costs 16 prompt passes in one batch."""

    capabilities = frozenset({SCORE, HIDDEN_STATES, COUNT_TOKENS})

    def __init__(self, model: str | Path, device: str | None = None, dtype: str | None = None,
                 chunk_size: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model)
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        where = str(path.parent if kwargs else path)
        if not Path(where).exists():
            raise FileNotFoundError(f"model {path} not found; pass a local model directory or GGUF file")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        self.chunk_size = (4 if on_gpu else 1) if chunk_size is None else chunk_size
        if self.chunk_size < 1:                               # refused before the slow load
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        self.tokenizer.padding_side = "left"                 # every prompt ends where generation starts
        dtype = ("bfloat16" if on_gpu else "float32") if dtype in (None, "auto") else dtype
        self.model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **kwargs).to(device)
        self.model.eval()
        self.device = device
        self.name = f"transformers:{path.name}"

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return self._generate([prompt], params)[0]

    def _draw_many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        pools = []
        for i in range(0, len(prompts), self.chunk_size):
            chunk, chunk_params = prompts[i:i + self.chunk_size], params[i:i + self.chunk_size]
            first = chunk_params[0]
            if all(p.with_seed(first.seed) == first for p in chunk_params):
                pools.extend(self._generate(chunk, first))
            else:                                            # one generate call takes one set of parameters
                pools.extend(self.sample(prompt, p) for prompt, p in zip(chunk, chunk_params))
        return pools

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        torch = self._torch
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        sampling = params.temperature > 0
        drawn = params.n if sampling else 1          # greedy candidates are all one; generate refuses n > 1
        torch.manual_seed(params.seed)
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=params.max_tokens, num_return_sequences=drawn,
                do_sample=sampling, temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None, top_k=0 if sampling else None,
                stop_strings=list(params.stop) or None, tokenizer=self.tokenizer,
                return_dict_in_generate=True, output_logits=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            new = out.sequences[:, inputs["input_ids"].shape[1]:]
            # log-probabilities under the model itself (temperature 1), as the llama.cpp backend
            # gives; one step at a time, so that only one step's logits are ever held in float32
            token_lp = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, new[:, i:i + 1]).squeeze(-1)
                                    for i, step in enumerate(out.logits)], dim=1)
        completions = []
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        for row, lps in zip(new.tolist(), token_lp.tolist()):
            length = next((i for i, t in enumerate(row) if t in stops), len(row))
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            completions.append(Completion(cut_at_stop(text, params.stop), float(sum(lps[:length])), length,
                                          "length" if length >= params.max_tokens else "stop"))
        # generate repeats each prompt `drawn` times in a row
        return [completions[k * drawn:(k + 1) * drawn] * (params.n // drawn) for k in range(len(prompts))]


    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _forced(self, prompt: str, continuations: list[str]):
        """The prompt + each continuation as one right-padded batch; the prompt's length, and each
        continuation's tokens."""
        torch = self._torch
        prompt_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        pieces = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if not all(pieces):
            raise ValueError("scoring needs non-empty continuations (a candidate and its end of line)")
        rows = [prompt_ids + piece for piece in pieces]
        width, pad = max(map(len, rows)), self.tokenizer.pad_token_id or 0
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device)
        return ids, mask, len(prompt_ids), pieces

    def score(self, prompt: str, continuations: list[str]) -> list[tuple[float, int]]:
        """Teacher-forced ``(sum of token log-probabilities, tokens)`` of each continuation after
        ``prompt``, at temperature 1."""
        torch = self._torch
        ids, mask, start, pieces = self._forced(prompt, continuations)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        scores = []
        for k, piece in enumerate(pieces):
            # the logits at position i predict token i + 1
            rows = torch.log_softmax(logits[k, start - 1:start - 1 + len(piece)].float(), dim=-1)
            picked = rows.gather(-1, torch.tensor(piece, device=self.device)[:, None])
            scores.append((float(picked.double().sum()), len(piece)))
        return scores

    def hidden_states(self, prompt: str, continuations: list[str]):
        """The last layer's state after the final norm (what the language-model head reads) at the
        last token of prompt + each continuation: one row per continuation, float32."""
        torch = self._torch
        ids, mask, start, pieces = self._forced(prompt, continuations)
        with torch.no_grad():
            states = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = torch.tensor([start + len(piece) - 1 for piece in pieces], device=self.device)
        return states[torch.arange(len(pieces), device=self.device), last].float().cpu().numpy()


def export_model_folder(gguf: str | Path, target: str | Path, dtype: str = "bfloat16") -> Path:
    """De-quantize a GGUF file into ``target`` (config, safetensors weights, tokenizer).

    Does nothing when ``target`` already holds a model, so repeated runs reuse the export.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    gguf, target = Path(gguf), Path(target)
    if (target / "config.json").exists():
        return target
    if not gguf.exists():
        raise FileNotFoundError(f"GGUF file {gguf} not found")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # The weights are plain tensors once loaded; transformers still marks the model as
    # GGUF-quantized and refuses to save it unless the marks are dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    tokenizer.save_pretrained(partial)
    model.save_pretrained(partial)
    partial.replace(target)
    return target


def float32_folder(gguf: Path) -> Path:
    """``gguf`` de-quantized into a float32 model folder in the cache (made once): what training
    on the CPU starts from (``ttp tune``, the ``lm`` reward model)."""
    from ttp.tasks.embedded import cache_dir

    return export_model_folder(gguf, cache_dir() / "models" / f"{Path(gguf).stem}-float32", "float32")
