import pytest

from ttp.analysis.pools import Pools
from ttp.policy import Completion, PolicyBackend, SamplingParams, cut_at_stop
from ttp.runs.sampling import read_pools, sample_pools
from ttp.tasks.data import LAYOUTS
from ttp.tasks.prompts import PromptBuilder
from ttp.tasks.utility import candidate_table


class RecordingBackend(PolicyBackend):
    """Replays profile titles as candidates and records which prompts it was asked for; it
    tests the resumable loop, not a language model (test_llama_backend.py does that)."""

    name = "recording"

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def sample(self, prompt, params):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of a query
        self.calls.append(prompt)
        return [Completion(f"candidate {i} {params.seed}", -1.0 * i, 3) for i in range(params.n)]


def test_interrupted_sampling_resumes_without_repeating_finished_queries(pep_task, tmp_path):
    queries = list(pep_task.queries[:6])
    path = tmp_path / "pools.jsonl"
    prompts = PromptBuilder(pep_task.layout, "plain")
    params = SamplingParams(n=3)
    with pytest.raises(KeyboardInterrupt):
        sample_pools(queries, prompts, RecordingBackend(fail_after=4), params, path, show_progress=False)
    assert [r["query_id"] for r in read_pools(path)] == [q.id for q in queries[:4]]
    with path.open("a") as fh:
        fh.write('{"query_id": "torn')  # a kill mid-write leaves half a line
    second = RecordingBackend()
    pools = sample_pools(queries, prompts, second, params, path, show_progress=False)
    assert len(second.calls) == 2
    assert [p["query_id"] for p in pools] == [q.id for q in queries]
    assert [r["query_id"] for r in read_pools(path)] == [q.id for q in queries]


def test_resumed_pools_equal_uninterrupted_ones(pep_task, tmp_path):
    queries = list(pep_task.queries[:5])
    prompts = PromptBuilder(pep_task.layout, "plain")
    params = SamplingParams(n=2, seed=9)
    whole = sample_pools(queries, prompts, RecordingBackend(), params, tmp_path / "a.jsonl", show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        sample_pools(queries, prompts, RecordingBackend(fail_after=2), params, tmp_path / "b.jsonl",
                     show_progress=False)
    resumed = sample_pools(queries, prompts, RecordingBackend(), params, tmp_path / "b.jsonl", show_progress=False)
    assert whole == resumed


def test_utilities_are_rouge_against_the_gold(pep_task):
    query = pep_task.queries[0]
    pools = [{"query_id": query.id, "texts": [query.gold, "", "completely unrelated words"],
              "logprobs": [-1.0, -2.0, -3.0], "n_tokens": [3, 0, 3]}]
    frame = candidate_table(pools, pep_task.by_id())
    assert frame.loc[0, "rougeL"] == pytest.approx(1.0)
    assert frame.loc[1, "rougeL"] == 0.0
    matrix = Pools.from_frame(frame)
    assert matrix["rougeL"].shape == (1, 3) and matrix.query_ids[0] == query.id and matrix.users[0] == query.user
    with pytest.raises(KeyError, match="no column 'score:x'"):
        matrix["score:x"]


def test_completions_are_cut_at_the_stop_then_cleaned_by_their_task():
    titles, abstracts = LAYOUTS["lamp5-title"], LAYOUTS["longlamp-abstract"]
    assert titles.clean(cut_at_stop(' "A Title"\nmore', ("\n",))) == "A Title"
    assert titles.clean(cut_at_stop("Title: PEP Purpose", ("\n",))) == "PEP Purpose"
    assert titles.clean("Subject: **Bold**") == "Bold"          # the short tasks share their labels
    assert abstracts.clean("Abstract: This PEP proposes.") == "This PEP proposes."
    assert abstracts.clean("Title: kept") == "Title: kept"      # a long task drops its own label only


class ChunkedBackend(RecordingBackend):
    """Draws chunks of three with one sample_many call, as a batching engine would."""

    chunk_size = 3

    def __init__(self, fail_on_chunk=None):
        super().__init__()
        self.chunks, self.fail_on_chunk = [], fail_on_chunk

    def _draw_many(self, prompts, params):
        if len(self.chunks) == self.fail_on_chunk:
            raise KeyboardInterrupt
        self.chunks.append(len(prompts))
        return super()._draw_many(prompts, params)


def test_sampling_in_chunks_draws_the_same_pools_and_a_kill_loses_at_most_the_chunk_in_flight(pep_task, tmp_path):
    queries = list(pep_task.queries[:7])
    prompts, params = PromptBuilder(pep_task.layout, "plain"), SamplingParams(n=2, seed=4)
    alone = sample_pools(queries, prompts, RecordingBackend(), params, tmp_path / "a.jsonl", show_progress=False)
    chunked = ChunkedBackend()
    together = sample_pools(queries, prompts, chunked, params, tmp_path / "b.jsonl", show_progress=False)
    assert chunked.chunks == [3, 3, 1] and together == alone     # each query seeded by its id, not its place
    with pytest.raises(KeyboardInterrupt):
        sample_pools(queries, prompts, ChunkedBackend(fail_on_chunk=1), params, tmp_path / "c.jsonl",
                     show_progress=False)
    assert [r["query_id"] for r in read_pools(tmp_path / "c.jsonl")] == [q.id for q in queries[:3]]
    resumed = ChunkedBackend()
    assert sample_pools(queries, prompts, resumed, params, tmp_path / "c.jsonl", show_progress=False) == alone
    assert resumed.chunks == [3, 1]
    with pytest.raises(ValueError, match="one SamplingParams per prompt, got 2 prompts and 1"):
        ChunkedBackend().sample_many(["a", "b"], [params])


def test_pools_hold_completions_as_their_task_cleans_them(pep_task, tmp_path):
    class Labelled(RecordingBackend):
        def sample(self, prompt, params):
            return [Completion(f'Title: "Pick {i}"', -1.0, 3) for i in range(params.n)]

    pools = sample_pools(list(pep_task.queries[:1]), PromptBuilder(pep_task.layout, "plain"), Labelled(),
                         SamplingParams(n=2), tmp_path / "pools.jsonl", show_progress=False)
    assert pools[0]["texts"] == ["Pick 0", "Pick 1"]


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="n\n.*greater than or equal to 1"):
        SamplingParams(n=0)


def test_lamp_convention_is_rouge_score_without_stemming():
    from rouge_score import rouge_scorer

    from ttp.tasks.utility import rouge

    gold = "Running the interpreters in parallel"
    candidates = ["run the interpreter in parallel", "Running interpreters", "parallel runs", ""]
    reference = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=False)
    lamp, ttp = rouge(candidates, gold, "lamp"), rouge(candidates, gold)
    for metric in ("rougeL", "rouge1"):
        assert lamp[metric].tolist() == [reference.score(gold, c)[metric].fmeasure for c in candidates]
    assert ttp["rouge1"][0] > lamp["rouge1"][0]       # stemming matches run/running, interpreter(s)
    with pytest.raises(ValueError, match="convention must be one of"):
        rouge(candidates, gold, "bleu")
