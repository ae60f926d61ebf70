"""The Ray executor on a local Ray cluster with 2 workers, each holding the real llama.cpp backend."""
from functools import partial

import pytest

from ttp.policy import SamplingParams
from ttp.policy.llama_cpp import LlamaCppBackend
from ttp.runs.sampling import sample_pools
from ttp.tasks.prompts import PromptBuilder

pytestmark = pytest.mark.slow

# a factory Ray workers can unpickle: it names only importable code
small_llama = partial(LlamaCppBackend, n_ctx=2048, max_sequences=2, n_threads=1)


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    from ttp.runs.ray_executor import RayExecutor

    executor = RayExecutor(small_llama, workers=2, queries_per_task=1)
    yield executor
    executor.shutdown()
    ray.shutdown()


def test_ray_pools_equal_single_process_pools(ray_executor, pep_task, tmp_path):
    queries = list(pep_task.queries[:4])
    prompts = PromptBuilder(pep_task.layout, "plain")
    params = SamplingParams(n=2, max_tokens=6, seed=4)
    distributed = sample_pools(queries, prompts, None, params, tmp_path / "ray.jsonl", show_progress=False,
                               executor=ray_executor)
    local = sample_pools(queries, prompts, small_llama(), params, tmp_path / "local.jsonl", show_progress=False)
    assert [p["query_id"] for p in distributed] == [q.id for q in queries]  # each query exactly once
    assert [p["texts"] for p in distributed] == [p["texts"] for p in local]
