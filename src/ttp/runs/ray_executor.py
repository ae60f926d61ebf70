"""Ray executor for the sampling stage (optional extra ``ttp[ray]``): chunks of queries go to
Ray actors that each hold one policy backend and draw a chunk with one ``sample_many`` call;
finished chunks stream back to the driver, which appends them to the same resumable
``pools.jsonl``.  A cluster of GPU machines runs the same
command as one laptop: start Ray on the cluster, then pass ``--ray-workers`` / ``--ray-address``;
``--ray-gpus-per-worker`` reserves GPUs for each actor, and each call hands an actor the engine's
``--chunk-size`` of queries."""
from __future__ import annotations

from ttp.policy import SamplingParams
from ttp.tasks.data import Query
from ttp.tasks.prompts import PromptBuilder

RAY_CHUNK = 4     # queries an actor draws in one call where the engine sets no chunk size


class RayExecutor:
    """``executor(queries, prompts, params)`` yields pool records as the actors finish them."""

    def __init__(self, backend_factory, workers: int = 2, address: str | None = None,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, queries_per_task: int = RAY_CHUNK):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'ttp[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else max(workers * cpus_per_worker, 1),
                     include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        class Sampler:
            def __init__(self, factory):
                self.backend = factory()

            def run(self, queries, prompts, params):
                from ttp.runs.sampling import draw_pools

                return draw_pools(self.backend, prompts, params, queries)

        self.actors = [Sampler.remote(backend_factory) for _ in range(workers)]
        self.queries_per_task = queries_per_task

    def __call__(self, queries: list[Query], prompts: PromptBuilder, params: SamplingParams):
        ray = self._ray
        shards = [queries[i:i + self.queries_per_task] for i in range(0, len(queries), self.queries_per_task)]
        pending, free = {}, list(self.actors)
        while shards or pending:
            while shards and free:
                actor = free.pop()
                pending[actor.run.remote(shards.pop(0), prompts, params)] = actor
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                free.append(pending.pop(ref))
                yield from ray.get(ref)

    def shutdown(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
