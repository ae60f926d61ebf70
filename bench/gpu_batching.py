"""Batching on a GPU, measured: pools of 16 drawn one query per engine call against a chunk of
queries in one call, side by side in one run, and one decode step's time by sequences per step,
wall clock and GPU kernels alone, with each batch's decode throughput over a pool of 16's (the
ratios docs/scale-out.md quotes for a GPU).

    python bench/gpu_batching.py [--config MODEL_FOLDER] [--device cuda]

The engine is transformers with the embedded Gemma 3 270M's architecture (its config, read
from the GGUF, or ``--config`` a folder holding a config.json) and random weights: EOS never
stops a sequence (``min_new_tokens``), so every candidate runs ``MAX_TOKENS`` tokens and the
timings do not depend on the weights' values.  Prompts are random tokens of the length of a
personalized pep-titles prompt.  Eager transformers launches every operation from Python, which
vLLM's CUDA graphs avoid, so the sum of a step's kernel times is what such an engine approaches;
the static-cache row lets transformers compile the step with CUDA graphs where it can."""
import argparse
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from transformers import AutoConfig, AutoModelForCausalLM

M, MAX_TOKENS, PROMPT_TOKENS, ROUNDS = 16, 24, 538, 2
CHUNKS, DECODE_BATCHES, STEPS = (1, 4, 16, 64), (1, 16, 64, 256, 1024), 16


def build(config_folder: Path | None, device: str):
    if config_folder is None:
        from ttp.policy.llama_cpp import default_model_path

        gguf = default_model_path()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        config = AutoConfig.from_pretrained(config_folder)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def draw(model, prompts: torch.Tensor, chunk: int, **generate_kwargs) -> int:
    drawn = 0
    for i in range(0, len(prompts), chunk):
        ids = prompts[i:i + chunk]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                             top_p=0.95, temperature=1.0, num_return_sequences=M, max_new_tokens=MAX_TOKENS,
                             min_new_tokens=MAX_TOKENS, pad_token_id=0, **generate_kwargs)
        drawn += out.shape[0]
    return drawn


def pool_rates(model, prompts: torch.Tensor, device: str, chunks=CHUNKS, **generate_kwargs) -> dict[int, float]:
    """Candidates per second by queries per ``generate`` call; the chunk sizes take turns within
    each round, in reversed order every other round, so that drift hits them alike."""
    spent, drawn = dict.fromkeys(chunks, 0.0), dict.fromkeys(chunks, 0)
    with torch.no_grad():
        for chunk in chunks:                                           # warm-up: kernels, autotuning, compiles
            draw(model, prompts[:chunk], chunk, **generate_kwargs)
        for r in range(ROUNDS):
            for chunk in (chunks if r % 2 == 0 else tuple(reversed(chunks))):
                _sync(device)
                start = time.perf_counter()
                drawn[chunk] += draw(model, prompts, chunk, **generate_kwargs)
                _sync(device)
                spent[chunk] += time.perf_counter() - start
    return {chunk: drawn[chunk] / spent[chunk] for chunk in chunks}


def decode_step(model, batch: int, vocab: int, device: str) -> tuple[float, float | None]:
    """Milliseconds per decode step with ``batch`` sequences behind a prompt's cache: wall clock,
    and the GPU's kernels alone (the profiler's device time; None off a GPU)."""
    ids = torch.randint(4, vocab, (batch, PROMPT_TOKENS), device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

        def steps(count: int) -> None:
            nonlocal token
            for _ in range(count):
                token = model(input_ids=token, past_key_values=cache, use_cache=True,
                              logits_to_keep=1).logits[:, -1:].argmax(-1)

        steps(2)
        _sync(device)
        start = time.perf_counter()
        steps(STEPS)
        _sync(device)
        wall = (time.perf_counter() - start) / STEPS * 1e3
        if not device.startswith("cuda"):
            return wall, None
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            steps(STEPS)
            _sync(device)
    kernels = sum(event.self_device_time_total for event in profile.key_averages()
                  if event.device_type == DeviceType.CUDA) / STEPS / 1e3
    return wall, kernels or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="a folder with the model's config.json "
                        "(default: read from the embedded GGUF)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--queries", type=int, default=64, help="prompts drawn per way")
    args = parser.parse_args()
    model = build(args.config, args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{name}, torch {torch.__version__}; Gemma 3 270M architecture, random bf16 weights; "
          f"{args.queries} prompts of {PROMPT_TOKENS} tokens x {M} candidates of {MAX_TOKENS} tokens", flush=True)
    vocab = model.config.vocab_size
    prompts = torch.randint(4, vocab, (args.queries, PROMPT_TOKENS), device=args.device)
    chunks = tuple(c for c in CHUNKS if c <= args.queries)

    def show(title: str, rates: dict[int, float]) -> None:
        print(title, flush=True)
        for chunk, rate in rates.items():
            print(f"  {chunk:3d} queries ({chunk * M:5d} sequences) per call: {rate:8.1f} candidates/s, "
                  f"{rate / rates[1]:6.2f}x one query per call", flush=True)

    show("transformers generate, dynamic cache, eager", pool_rates(model, prompts, args.device, chunks))
    print(f"one decode step behind a {PROMPT_TOKENS}-token prompt, eager (dynamic cache):", flush=True)
    steps = {}
    for batch in DECODE_BATCHES:
        try:
            steps[batch] = decode_step(model, batch, vocab, args.device)
        except torch.OutOfMemoryError:
            print(f"  {batch:5d} sequences: out of memory", flush=True)
            break
        wall, kernels = steps[batch]
        print(f"  {batch:5d} sequences: {wall:7.2f} ms wall ({batch / wall * 1e3:9.0f} tokens/s)"
              + (f", kernels {kernels:6.2f} ms ({batch / kernels * 1e3:9.0f} tokens/s)" if kernels else ""),
              flush=True)
    for label, index in (("wall", 0), ("kernels", 1)):
        if M in steps and steps[M][index]:
            pool = M / steps[M][index]
            ratios = ", ".join(f"{batch}: {batch / step[index] / pool:.1f}x" for batch, step in steps.items()
                               if batch > M and step[index])
            print(f"decode throughput by sequences per step, {label}, over a pool of {M}'s: {ratios}", flush=True)
    if args.device.startswith("cuda"):
        try:
            show("transformers generate, static cache (compiled with CUDA graphs where transformers can)",
                 pool_rates(model, prompts[:16], args.device, tuple(c for c in chunks if c <= 16),
                            cache_implementation="static"))
        except Exception as error:                              # the eager rows above stand on their own
            print(f"static cache: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    main()
