"""Hugging Face transformers backend: a local model directory (or a GGUF file, which
transformers de-quantizes on load), ``M`` sequences sampled in one batched ``generate``.
``export_model_folder`` writes a GGUF out as a regular model folder, which vLLM and other
engines load, so the embedded default runs on them without a download."""
from __future__ import annotations

from pathlib import Path

from ttp.policy import Completion, PolicyBackend, SamplingParams, cut_at_stop


class TransformersBackend(PolicyBackend):
    def __init__(self, model: str | Path, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model)
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        where = str(path.parent if kwargs else path)
        if not Path(where).exists():
            raise FileNotFoundError(f"model {path} not found; pass a local model directory or GGUF file")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **kwargs).to(device)
        self.model.eval()
        self.device = device
        self.name = f"transformers:{path.name}"

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        torch = self._torch
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        sampling = params.temperature > 0
        torch.manual_seed(params.seed)
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                do_sample=sampling, temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None, top_k=0 if sampling else None,
                stop_strings=list(params.stop) or None, tokenizer=self.tokenizer,
                return_dict_in_generate=True, output_logits=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        start = inputs["input_ids"].shape[1]
        new = out.sequences[:, start:]
        # log-probabilities under the model itself (temperature 1), as the llama.cpp backend gives
        logits = torch.stack(out.logits, dim=1).float()
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        completions = []
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        for row, lps in zip(new.tolist(), token_lp.tolist()):
            length = next((i for i, t in enumerate(row) if t in stops), len(row))
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            completions.append(Completion(cut_at_stop(text, params.stop), float(sum(lps[:length])), length,
                                          "length" if length >= params.max_tokens else "stop"))
        return completions


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
