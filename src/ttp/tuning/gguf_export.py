"""The tuned model as a GGUF file: the base GGUF with the tuned attention projections put in.

LoRA changes only the attention projections, so every other tensor (the embeddings, the
feed-forward blocks, the norms) and all the metadata (the tokenizer, the chat template) are
copied byte for byte from the base.  The tuned projections are written in F16: a LoRA update is
smaller than the step of any 8-bit block type (measured: a largest change of 3e-4 against Q8_0
rounding of up to 3e-3), so requantizing would round much of the tuning away.

``distribution_check`` compares the next-token distributions of the tuned weights
(transformers) and the tuned GGUF (llama.cpp) on the same prompts, beside the same comparison
for the base: the tuned pair must agree about as well as the base pair does, which is the
floor llama.cpp's own arithmetic sets.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np

TUNED_TYPE = gguf.GGMLQuantizationType.F16
PROJECTION_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
HF_NAME = re.compile(r"^layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$")


class ExportError(ValueError):
    """The tuned weights do not fit the base GGUF (another model, or a layout llama.cpp permutes)."""


def gguf_name(hf_name: str) -> str:
    match = HF_NAME.match(hf_name)
    if not match:
        raise ExportError(f"{hf_name!r} is not an attention projection this export knows")
    return f"blk.{match.group(1)}.{PROJECTION_NAMES[match.group(2)]}.weight"


def write_tuned_gguf(base_gguf: str | Path, base_weights: dict, tuned_weights: dict, target: str | Path) -> Path:
    """Write ``target``: ``base_gguf`` with each of ``tuned_weights`` (float32 ``(out, in)``, by
    transformers name) in place of its tensor.  ``base_weights``, the same projections as
    transformers de-quantized them, must equal the GGUF's own: that checks names and layout."""
    reader = gguf.GGUFReader(str(base_gguf))
    replaced = {gguf_name(name): name for name in tuned_weights}
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(set(replaced) - set(tensors))
    if missing:
        raise ExportError(f"{base_gguf} has no tensor {missing[0]} (and {len(missing) - 1} more): another model?")
    data = {}
    for name, hf_name in replaced.items():
        tensor = tensors[name]
        original = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        base = np.asarray(base_weights[hf_name], dtype=np.float32)
        if original.shape != base.shape or np.abs(original - base).max() > 1e-6:
            raise ExportError(f"{name} of {base_gguf} is not the weight transformers loaded as {hf_name}")
        data[name] = gguf.quants.quantize(np.asarray(tuned_weights[hf_name], dtype=np.float32), TUNED_TYPE)

    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(partial), architecture)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(field.name, field.contents(), field.types[0],
                             sub_type=field.types[-1] if array else None)
    for tensor in reader.tensors:
        raw = data.get(tensor.name, tensor.data)
        kind = TUNED_TYPE if tensor.name in data else tensor.tensor_type
        writer.add_tensor_info(tensor.name, raw.shape, raw.dtype, raw.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(data.get(tensor.name, tensor.data))
    writer.close()
    partial.replace(target)
    return target


def kl_divergence(p_logprobs: np.ndarray, q_logprobs: np.ndarray) -> np.ndarray:
    """``KL(p || q)`` in nats of each row of two arrays of log-probabilities over one vocabulary."""
    p = np.exp(p_logprobs)
    return (p * (p_logprobs - q_logprobs)).sum(axis=-1)


def distribution_check(hf_base: np.ndarray, hf_tuned: np.ndarray, base_gguf: Path, tuned_gguf: Path,
                        prompts: list[str]) -> dict:
    """Mean KL (nats) of the next-token distributions: each GGUF against the weights it came
    from, and the tuning's own shift, which the tuned pair's agreement must be far below."""
    from ttp.policy.llama_cpp import LlamaCppBackend

    def llama_logprobs(path: Path) -> np.ndarray:
        backend = LlamaCppBackend(path, n_ctx=1024, max_sequences=1)
        try:
            return np.stack([backend.next_token_distribution(p) for p in prompts])
        finally:
            backend.close()

    gguf_base, gguf_tuned = llama_logprobs(base_gguf), llama_logprobs(tuned_gguf)
    return {"prompts": len(prompts),
            "kl_base_gguf_vs_base_weights": float(kl_divergence(hf_base, gguf_base).mean()),
            "kl_tuned_gguf_vs_tuned_weights": float(kl_divergence(hf_tuned, gguf_tuned).mean()),
            "kl_tuned_weights_vs_base_weights": float(kl_divergence(hf_tuned, hf_base).mean()),
            "top_token_agreement": float((hf_tuned.argmax(1) == gguf_tuned.argmax(1)).mean())}
