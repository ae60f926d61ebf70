"""vLLM vs transformers on one GPU, side by side: candidates per second for pools of M = 16
on 64 pep-titles prompts.  Needs a GPU machine with vLLM installed (`pip install -e '.[vllm]'`).

The model is the embedded Gemma 3 270M: transformers de-quantizes the GGUF and saves it as a
regular model folder that both engines load, so nothing is downloaded."""
import sys
import time
from pathlib import Path

from ttp.backends import SamplingParams
from ttp.data import load_task
from ttp.prompts import PromptBuilder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pep-titles"
PROMPTS, M = 64, 16


def export_model(target: Path) -> Path:
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttp.backends.llama_cpp import default_model_path

    gguf = default_model_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(target)
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(target)
    return target


def main(model_dir="/tmp/ttp-gemma-270m"):
    import torch

    model = export_model(Path(model_dir))
    task = load_task(DATA)
    prompts = [PromptBuilder(task.layout, "personalized")(q) for q in task.queries[:PROMPTS]]
    params = SamplingParams(n=M, max_tokens=24)
    print(f"GPU: {torch.cuda.get_device_name(0)}; {PROMPTS} prompts x {M} candidates")

    from ttp.backends.transformers_backend import TransformersBackend

    hf = TransformersBackend(model, device="cuda", dtype="bfloat16")
    hf.sample(prompts[0], params)
    t0 = time.perf_counter()
    for p in prompts:
        hf.sample(p, params)
    t_hf = time.perf_counter() - t0
    del hf
    torch.cuda.empty_cache()

    from ttp.backends.vllm_backend import VLLMBackend

    vllm = VLLMBackend(str(model), gpu_memory_utilization=0.5)
    vllm.sample(prompts[0], params)
    t0 = time.perf_counter()
    vllm.sample_many(prompts, params)
    t_vllm = time.perf_counter() - t0
    n = PROMPTS * M
    print(f"transformers: {n / t_hf:9.1f} candidates/s")
    print(f"vLLM:         {n / t_vllm:9.1f} candidates/s")
    print(f"vLLM / transformers: {t_hf / t_vllm:.1f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
