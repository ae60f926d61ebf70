"""The transformers backend on a model that is really on this machine: the embedded Gemma 3
270M GGUF, which transformers de-quantizes on load (slow to load, about a minute or two)."""
import math

import pytest
from typer.testing import CliRunner

from ttp.cli import app
from ttp.policy import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    from ttp.policy.llama_cpp import default_model_path
    from ttp.policy.transformers_backend import TransformersBackend

    return TransformersBackend(default_model_path())


def test_samples_independent_candidates_with_log_probabilities(backend, pep_task):
    from ttp.tasks.prompts import PromptBuilder

    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[0])
    pool = backend.sample(prompt, SamplingParams(n=4, max_tokens=12, seed=2))
    assert len(pool) == 4 and len({c.text for c in pool}) > 1
    for c in pool:
        assert "\n" not in c.text and 0 < c.n_tokens <= 12 and math.isfinite(c.logprob) and c.logprob < 0
    assert backend.sample(prompt, SamplingParams(n=4, max_tokens=12, seed=2)) == pool


def test_exported_model_folder_generates_what_the_gguf_generates(backend, pep_task, tmp_path):
    from ttp.policy.transformers_backend import TransformersBackend
    from ttp.tasks.prompts import PromptBuilder

    folder = tmp_path / "gemma"
    result = CliRunner().invoke(app, ["export-model", str(folder), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in folder.iterdir()}
    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[1])
    greedy = SamplingParams(n=1, temperature=0, max_tokens=12)
    [exported] = TransformersBackend(folder).sample(prompt, greedy)
    [original] = backend.sample(prompt, greedy)
    assert (exported.text, exported.n_tokens) == (original.text, original.n_tokens)
    assert exported.logprob == pytest.approx(original.logprob, abs=1e-4)


def test_a_chunk_in_one_generate_gives_each_prompt_its_own_pool_in_order(backend, pep_task, monkeypatch):
    from ttp.tasks.prompts import PromptBuilder

    build = PromptBuilder(pep_task.layout, "personalized")
    prompts = [build(q) for q in pep_task.queries[:3]]            # prompts of different lengths: left padding
    monkeypatch.setattr(backend, "chunk_size", 2)
    greedy = SamplingParams(n=2, temperature=0, max_tokens=10)
    chunked = backend.sample_many(prompts, [greedy] * 3)
    alone = [backend.sample(p, greedy) for p in prompts]
    assert [[c.text for c in pool] for pool in chunked] == [[c.text for c in pool] for pool in alone]
    for pool, reference in zip(chunked, alone):
        assert [c.n_tokens for c in pool] == [c.n_tokens for c in reference]
        assert [c.logprob for c in pool] == pytest.approx([c.logprob for c in reference], abs=1e-3)
    sampled = [SamplingParams(n=3, max_tokens=10, seed=s) for s in (5, 6, 7)]
    pools = backend.sample_many(prompts, sampled)
    assert [len(pool) for pool in pools] == [3, 3, 3] and backend.sample_many(prompts, sampled) == pools
    mixed = backend.sample_many(prompts[:2], [SamplingParams(n=2, max_tokens=8), SamplingParams(n=3, max_tokens=8)])
    assert [len(pool) for pool in mixed] == [2, 3]                # a chunk of unlike parameters: one call each


def test_scores_and_hidden_states_match_llama_cpps_within_their_numerics(backend, pep_task):
    """The same model read by both engines: llama.cpp multiplies the Q4_K_M weights with its
    quantized kernels, transformers the same weights de-quantized in float32, so the two agree to
    the kernels' rounding, not to the digit (measured: cosine >= 0.999, 4% relative difference of
    the states; 0.03 nats per token of the scores)."""
    import numpy as np

    from ttp.policy.llama_cpp import LlamaCppBackend
    from ttp.rewards.families import FAMILIES
    from ttp.tasks.prompts import PromptBuilder, as_generated

    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[0])
    texts = [as_generated(t) for t in ("Cached module imports", "A new syntax for pattern matching", "Zebras")]
    llama = LlamaCppBackend(n_ctx=4096, max_sequences=4)
    ours, theirs = backend.hidden_states(prompt, texts), llama.hidden_states(prompt, texts)
    assert ours.shape == theirs.shape == (3, llama.n_embd)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.998
    assert (np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)).max() < 0.1
    for (lp, n), (reference, n_reference) in zip(backend.score(prompt, texts), llama.score(prompt, texts)):
        assert n == n_reference and abs(lp - reference) / n < 0.1
    assert backend.count_tokens(prompt) == llama.count_tokens(prompt)
    FAMILIES["hidden_state"].check_backend("transformers")          # the family takes this engine now
