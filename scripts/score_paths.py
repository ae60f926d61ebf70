"""Where teacher-forced log-probabilities of the embedded model differ, path by path, on this CPU.

For a few real prompts and continuations it prints the sum of token log-probabilities five ways:

  batched    LlamaCppBackend.score over the whole pool in one decode (the prompt's KV cache shared)
  alone      LlamaCppBackend.score of one continuation (the same code path)
  one        llama.cpp's own Llama.eval of prompt + continuation in one decode
  two        llama.cpp's own Llama.eval of the prompt, then of the continuation
  steps      llama.cpp's own Llama.eval of the prompt, then the continuation a token at a time

and, at the end, each path's largest difference from ``two``, which is what TTP's scoring
computes (tests/llama_reference.py holds llama.cpp's three ways; the tests use it too).

    python scripts/score_paths.py [--task tests/data/pep-titles-mini] [--queries 3]
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from llama_reference import WAYS, LlamaReference  # noqa: E402

from ttp.policy.llama_cpp import LlamaCppBackend  # noqa: E402
from ttp.tasks.data import load_task  # noqa: E402
from ttp.tasks.prompts import PromptBuilder  # noqa: E402

CONTINUATIONS = [" A Title About Hashing\n", " Deprecate modules\n", " Structural Pattern Matching for Python\n"]
PATHS = ("batched", "alone", *WAYS)


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=Path, default=ROOT / "tests/data/pep-titles-mini")
    parser.add_argument("--queries", type=int, default=3)
    args = parser.parse_args()
    task = load_task(args.task)
    print(f"CPU: {platform.machine()}, {_cpu_name()}; llama-cpp-python {llama_cpp.__version__}")
    backend, reference = LlamaCppBackend(n_ctx=4096, max_sequences=8), LlamaReference()
    gaps = {path: 0.0 for path in PATHS}
    for query in task.queries[:args.queries]:
        prompt = PromptBuilder(task.layout, "personalized")(query)
        print(f"\nquery {query.id} ({len(reference.tokens(prompt, prompt=True))} prompt tokens)")
        print(f"  {'continuation':40s}" + "".join(f"{p:>10s}" for p in PATHS))
        pool = backend.score(prompt, CONTINUATIONS)
        for text, (batched, _) in zip(CONTINUATIONS, pool):
            sums = {"batched": batched, "alone": backend.score(prompt, [text])[0][0],
                    **{way: reference.logprob(prompt, text, way) for way in WAYS}}
            for path, value in sums.items():
                gaps[path] = max(gaps[path], abs(value - sums["two"]))
            print(f"  {text.strip()[:40]:40s}" + "".join(f"{v:10.4f}" for v in sums.values()))
    print("\nlargest |difference| from llama.cpp's own prompt-then-continuation sum, nats:")
    for path, gap in gaps.items():
        print(f"  {path:8s} {gap:.4f}")
    backend.close()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
