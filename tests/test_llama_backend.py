"""The real embedded model (Gemma 3 270M through llama.cpp) on a few real queries."""
import math

import pytest

from ttp.policy import SamplingParams
from ttp.tasks.prompts import PromptBuilder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    from ttp.policy.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(n_ctx=4096, max_sequences=8)
    yield b
    b.close()


def test_samples_a_pool_per_query_with_log_probabilities(backend, pep_task):
    for query in pep_task.queries[:2]:
        prompt = PromptBuilder(pep_task.layout, "personalized")(query)
        pool = backend.sample(prompt, SamplingParams(n=4, max_tokens=16, seed=1))
        assert len(pool) == 4
        assert sum(bool(c.text) for c in pool) >= 3
        assert len({c.text for c in pool}) >= 2  # independent draws at temperature 1
        for c in pool:
            assert "\n" not in c.text
            assert 0 < c.n_tokens <= 16 and math.isfinite(c.logprob) and c.logprob < 0


def test_same_seed_same_pool_and_greedy_matches_llama_cpp_own_decoding(backend, pep_task):
    prompt = PromptBuilder(pep_task.layout, "plain")(pep_task.queries[3])
    params = SamplingParams(n=3, max_tokens=12, seed=5)
    assert backend.sample(prompt, params) == backend.sample(prompt, params)
    greedy = backend.sample(prompt, SamplingParams(n=2, max_tokens=12, temperature=0))
    # same tokens; log-probabilities differ by a few percent between rows of one batch, whose
    # logits come from different kernel paths
    assert greedy[0].text == greedy[1].text
    assert greedy[0].logprob == pytest.approx(greedy[1].logprob, rel=0.05)
    import llama_cpp

    from ttp.policy.llama_cpp import default_model_path

    own = llama_cpp.Llama(str(default_model_path()), n_ctx=2048, verbose=False)
    reference = own.create_completion(prompt, max_tokens=12, temperature=0, stop=["\n"])
    assert greedy[0].text == reference["choices"][0]["text"].strip().strip('"*').strip()


def test_a_prompt_kept_in_the_cache_gives_the_pools_of_a_fresh_backend(backend, pep_task):
    from ttp.policy.llama_cpp import LlamaCppBackend

    first, second = (PromptBuilder(pep_task.layout, "personalized")(q) for q in pep_task.queries[6:8])
    params = SamplingParams(n=3, max_tokens=10, seed=4)
    backend.sample(first, SamplingParams(n=5, max_tokens=10, seed=1))   # leaves 5 sequences behind
    cached = [backend.sample(first, params), backend.sample(first, params)]
    backend.sample(second, params)
    fresh = LlamaCppBackend(n_ctx=4096, max_sequences=8)
    try:
        assert cached[0] == cached[1] == fresh.sample(first, params)
        assert backend.sample(second, params) == fresh.sample(second, params)
    finally:
        fresh.close()


def test_an_over_long_profile_item_samples_fine(backend, pep_task):
    from dataclasses import replace

    query = pep_task.queries[5]
    huge = replace(query.profile[0], output="token " * 100_000, source="text " * 100_000)
    prompt = PromptBuilder(pep_task.layout, "personalized", k=len(query.profile))(
        replace(query, profile=(huge, *query.profile[1:])))
    pool = backend.sample(prompt, SamplingParams(n=2, max_tokens=8, seed=2))
    assert len(pool) == 2 and all(c.n_tokens > 0 for c in pool)


def test_clear_errors_for_oversized_requests(backend):
    with pytest.raises(ValueError, match="max_sequences"):
        backend.sample("x", SamplingParams(n=9))
    with pytest.raises(ValueError, match="exceeds the context of 4096; raise --n-ctx"):
        backend.sample("word " * 5000, SamplingParams(n=2, max_tokens=8))


def test_teacher_forced_scores_equal_llama_cpp_own_log_probabilities(backend, pep_task):
    import llama_cpp
    import numpy as np

    from ttp.policy.llama_cpp import default_model_path

    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[0])
    continuations = [" A Title About Hashing\n", " Deprecate modules\n", "\n"]
    scored = backend.score(prompt, continuations)
    reference = llama_cpp.Llama(str(default_model_path()), n_ctx=2048, logits_all=True, verbose=False)
    prompt_tokens = reference.tokenize(prompt.encode(), add_bos=True, special=True)
    for text, (logprob, n_tokens) in zip(continuations, scored):
        tokens = reference.tokenize(text.encode(), add_bos=False, special=False)
        reference.reset()
        reference.eval(prompt_tokens + tokens)
        logits = np.array(reference.scores[len(prompt_tokens) - 1:len(prompt_tokens) + len(tokens) - 1], dtype=float)
        log_z = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
        own = float((logits[np.arange(len(tokens)), tokens] - log_z).sum())
        assert n_tokens == len(tokens)
        # one batched decode of every continuation against llama.cpp's own single-sequence pass:
        # the same tokens, numerics a percent or two apart (as for sampled log-probabilities)
        assert logprob == pytest.approx(own, rel=0.02)


def test_pmi_is_exactly_zero_when_both_prompts_are_the_same(backend, pep_task):
    prompt = PromptBuilder(pep_task.layout, "plain")(pep_task.queries[2])
    texts = [" First title\n", " Second, longer candidate title\n"]
    fresh = backend.score(prompt, texts)                 # evaluates the prompt
    cached = backend.score(prompt, texts)                # reuses it from the cache
    assert [a[0] - b[0] for a, b in zip(fresh, cached)] == [0.0, 0.0]


def test_hidden_states_are_the_final_states_of_a_single_pass(backend, pep_task):
    import llama_cpp
    import numpy as np

    from ttp.policy.llama_cpp import default_model_path

    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[1])
    continuations = [" A Title About Hashing\n", " Deprecate modules\n"]
    states = backend.hidden_states(prompt, continuations)
    assert states.shape == (2, backend.n_embd)
    reference = llama_cpp.Llama(str(default_model_path()), n_ctx=2048, embedding=True, pooling_type=0,
                                verbose=False)
    for text, state in zip(continuations, states):
        own = np.array(reference.embed(prompt + text, normalize=False, truncate=False))[-1]
        # the last token's state of llama.cpp's own pass over prompt + continuation; batched and
        # single-sequence kernels differ by a few percent, as for log-probabilities
        cosine = float(own @ state / np.linalg.norm(own) / np.linalg.norm(state))
        assert cosine > 0.99
    # embeddings mode is switched off again: scoring still gives log-probabilities
    assert backend.score(prompt, continuations)[0][0] < 0
    assert not np.allclose(states[0], states[1], rtol=0.05)


def test_judge_is_the_log_odds_of_yes_against_no(backend, pep_task):
    import llama_cpp
    import numpy as np

    from ttp.policy.llama_cpp import default_model_path
    from ttp.rewards.zero_shot import judge_prompt, judge_question, judge_scores

    query = pep_task.queries[4]
    prompt = judge_prompt(query, pep_task.layout)
    texts = ["Deprecate modules", "A title about hashing"]
    fast = judge_scores(backend, prompt, pep_task.layout, texts)   # one logit row per candidate

    class ScoresOnly:   # a backend with score() only, as a server is: both answers as continuations
        name = "scores only"
        score = staticmethod(backend.score)

    generic = judge_scores(ScoresOnly(), prompt, pep_task.layout, texts)
    reference = llama_cpp.Llama(str(default_model_path()), n_ctx=2048, logits_all=True, verbose=False)
    token_yes, token_no = (reference.tokenize(t.encode(), add_bos=False, special=False) for t in (" yes", " no"))
    assert len(token_yes) == len(token_no) == 1
    for text, a, b in zip(texts, fast, generic):
        context = reference.tokenize((prompt + judge_question(pep_task.layout, text)).encode(), add_bos=True,
                                     special=False)
        reference.reset()
        reference.eval(context)
        logits = np.array(reference.scores[len(context) - 1], dtype=float)
        own = logits[token_yes[0]] - logits[token_no[0]]
        # batched kernels move each logit by a few hundredths against llama.cpp's own pass; the
        # generic path's two sums over ~30 tokens each cancel only up to that noise per token
        assert a == pytest.approx(own, abs=0.2)
        assert b == pytest.approx(own, abs=0.5)
