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


def test_actors_reserve_the_gpus_and_cpus_the_engine_asks_for(ray_executor, pep_titles_dir, tmp_path):
    """On a cluster that declares 2 GPUs (Ray accounts for them whether or not they exist), a run's
    actors hold what --ray-gpus-per-worker and --ray-cpus-per-worker ask, and take --chunk-size
    queries a call; the Ray the executor found running is used as it is."""
    import ray

    from ttp.runs.config import RunConfig, TaskSpec
    from ttp.runs.pipeline import Pipeline

    ray_executor.shutdown()
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    from ttp.policy.registry import EngineConfig
    from ttp.runs.ray_executor import RayExecutor

    engine = EngineConfig(ray_workers=2, ray_gpus_per_worker=0.5, ray_cpus_per_worker=0.5, chunk_size=3)
    config = RunConfig(tasks=(TaskSpec(path=str(pep_titles_dir), max_users=8, max_queries_per_user=1),), engine=engine)
    made = []

    class Recording(RayExecutor):
        def __init__(self, *args):
            made.append(args[1:])
            super().__init__(*args)
            ray.get([actor.__ray_ready__.remote() for actor in self.actors])     # both actors placed
            held = {kind: ray.cluster_resources()[kind] - ray.available_resources().get(kind, 0)
                    for kind in ("GPU", "CPU")}
            assert held == {"GPU": pytest.approx(1.0), "CPU": pytest.approx(1.0)}     # 2 actors x 0.5 each
            raise RuntimeError("enough: the actors are up")

    import ttp.runs.ray_executor as module

    original, module.RayExecutor = module.RayExecutor, Recording
    try:
        with pytest.raises(RuntimeError, match="enough"):
            Pipeline(config, tmp_path / "run").run("sample")
    finally:
        module.RayExecutor = original
    assert made == [(2, None, 0.5, 0.5, 3)]
