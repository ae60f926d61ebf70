"""One GPU check of TTP's own code, for a person with one GPU (under 10 minutes there):

1. ``ttp run --backend transformers`` on a pep-titles subset, end to end, with the ``lm``
   reward-model family beside the feature MLPs (its training time is the run's own record);
2. the transformers backend drawing pools of 16 with chunk sizes 1, 4 and 16 (candidates/s);
3. ``ttp tune`` from the model folder for two optimizer steps, then a pool sampled from the tuned
   folder by the transformers backend.

The model is ``--model`` (any model folder), by default the embedded Gemma 3 270M exported to a
folder.  It prints the versions (torch, CUDA, transformers, peft, the GPU) and every figure as
one table.  ``--device cpu`` hides the GPU; ``--tiny`` shrinks every size to the committed
fixture's (the test suite runs it so on a CPU).

    python bench/gpu_check.py --out /tmp/gpu-check                 # on the GPU machine
    python bench/gpu_check.py --device cpu --tiny --data tests/data/pep-titles-mini --out /tmp/c
"""
import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path


def versions() -> dict:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "-",
            "transformers": transformers.__version__, "peft": peft.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded Gemma exported)")
    parser.add_argument("--data", type=Path, default=None, help="pep-titles folder (default: the one ttp derives)")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder, emptied first")
    parser.add_argument("--tiny", action="store_true", help="fixture sizes, for a test on the CPU")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""            # before torch is imported
    from _data import pep_titles_dir

    from ttp.policy import SamplingParams
    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.registry import EngineConfig
    from ttp.policy.transformers_backend import TransformersBackend, export_model_folder
    from ttp.runs.config import RunConfig, TaskSpec
    from ttp.runs.pipeline import run_stages
    from ttp.tasks.data import load_task
    from ttp.tasks.prompts import PromptBuilder
    from ttp.tuning import TuneConfig, tune
    from ttp.tuning.lora import LoraConfig

    data = pep_titles_dir(args.data)
    users, per_user, pool, tokens = (6, 1, 4, 8) if args.tiny else (40, 2, 16, 24)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    info = versions()
    model = args.model or export_model_folder(default_model_path(), args.out / "gemma-3-270m",
                                              "float32" if args.device == "cpu" else "bfloat16")
    rows = []

    start = time.perf_counter()
    config = RunConfig(tasks=(TaskSpec(path=str(data.resolve()), max_users=users, max_queries_per_user=per_user),),
                       sampling=SamplingParams(n=pool, max_tokens=tokens, seed=0), bootstrap=100,
                       engine=EngineConfig(backend="transformers", model_path=str(model)),
                       families=("features", "lm"), rm_model=str(model))
    pipeline = run_stages(config, args.out / "run", show_progress=False)
    task_name = pipeline.tasks[0].name
    rows.append(("ttp run --backend transformers, end to end (s)", f"{time.perf_counter() - start:.1f}",
                 f"{users} users x {per_user} queries, pools of {pool}, both promptings, families features + lm"))
    for policy in config.policies:
        evaluation = json.loads(pipeline.folder.reward_eval(task_name, policy).read_text())
        lm_seconds = sum(v for k, v in evaluation["train_seconds"].items() if k.startswith("lm.") and v)
        rows.append((f"lm family training, 4 heads, {policy} (s)", f"{lm_seconds:.1f}",
                     f"{evaluation['queries']} test queries scored"))

    task = load_task(data)
    prompt = PromptBuilder(task.layout, "personalized")
    prompts = [prompt(q) for q in task.queries[:4 if args.tiny else 16]]
    params = [SamplingParams(n=pool, max_tokens=tokens, seed=i) for i in range(len(prompts))]
    for chunk in (1, 4, 16):
        backend = TransformersBackend(model, chunk_size=chunk)
        backend.sample_many(prompts[:1], params[:1])                    # warm
        start = time.perf_counter()
        backend.sample_many(prompts, [SamplingParams(n=pool, max_tokens=tokens, seed=0)] * len(prompts))
        seconds = time.perf_counter() - start
        rows.append((f"transformers backend, chunk size {chunk} (candidates/s)",
                     f"{len(prompts) * pool / seconds:.1f}", f"{len(prompts)} pools of {pool}, {tokens} new tokens"))
        del backend

    start = time.perf_counter()
    tuned = tune(task, args.out / "tuned", TuneConfig(items_per_user=1, max_examples=16, base_model=str(model),
                                                      lora=LoraConfig(accumulation=8)))
    drawn = TransformersBackend(tuned.model).sample(prompts[0], SamplingParams(n=pool, max_tokens=tokens, seed=0))
    rows.append(("ttp tune from the model folder, 2 steps, on the CPU (s)", f"{time.perf_counter() - start:.1f}",
                 f"validation loss {tuned.record['validation_loss']['before']:.3f} -> "
                 f"{tuned.record['validation_loss']['after']:.3f}; tuned folder drew {len(drawn)} candidates"))

    print(" ".join(f"{k} {v};" for k, v in info.items()))
    print(f"model: {model}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>9}  {note}")


if __name__ == "__main__":
    main()
