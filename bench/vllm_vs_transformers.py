"""vLLM vs transformers on one device, side by side: candidates per second for pools of M = 16
on pep-titles prompts, same model, same dtype, same sampling parameters, one pool at a time as
the pipeline draws them.

On a GPU machine:  pip install -e '.[vllm,transformers]' && python bench/vllm_vs_transformers.py
On this CPU:       make .venv-vllm/bin/vllm && .venv-vllm/bin/python bench/vllm_vs_transformers.py

The model is the embedded Gemma 3 270M, exported from its GGUF as a regular model folder that
both engines load, so nothing is downloaded."""
import argparse
import time
from pathlib import Path

from _data import pep_titles_dir

from ttp.policy import SamplingParams
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder

M, MAX_TOKENS = 16, 24


def describe(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--prompts", type=int, default=64 if cuda else 2)
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/ttp-gemma-3-270m"))
    args = parser.parse_args()

    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.transformers_backend import TransformersBackend, export_model_folder
    from ttp.policy.vllm_backend import VLLMBackend

    model = export_model_folder(default_model_path(), args.model_dir.with_name(f"{args.model_dir.name}-{args.dtype}"),
                                dtype=args.dtype)
    task = load_task(pep_titles_dir(args.data))
    prompts = [PromptBuilder(task.layout, "personalized")(q) for q in task.queries[:args.prompts]]
    params = SamplingParams(n=M, max_tokens=MAX_TOKENS)
    print(f"{describe(args.device)}; {args.dtype}; {args.prompts} prompts x {M} candidates, "
          f"up to {MAX_TOKENS} tokens each")

    hf = TransformersBackend(model, device=args.device, dtype=args.dtype)
    hf.sample(prompts[0], params)
    t0 = time.perf_counter()
    hf_tokens = sum(c.n_tokens for p in prompts for c in hf.sample(p, params))
    t_hf = time.perf_counter() - t0
    del hf
    if cuda:
        torch.cuda.empty_cache()

    engine = VLLMBackend(str(model), dtype=args.dtype, max_model_len=2048)
    engine.sample(prompts[0], params)
    t0 = time.perf_counter()
    vllm_tokens = sum(c.n_tokens for p in prompts for c in engine.sample(p, params))
    t_vllm = time.perf_counter() - t0
    engine.close()

    n = len(prompts) * M
    print(f"transformers: {n / t_hf:9.1f} candidates/s ({hf_tokens / t_hf:8.1f} tokens/s)")
    print(f"vLLM:         {n / t_vllm:9.1f} candidates/s ({vllm_tokens / t_vllm:8.1f} tokens/s)")
    print(f"vLLM / transformers: {t_hf / t_vllm:.2f}x (candidates per second)")


if __name__ == "__main__":
    main()
