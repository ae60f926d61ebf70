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


def test_same_seed_same_pool_and_greedy_matches_llama_cpp_own_decoding(backend, pep_task, llama_reference):
    prompt = PromptBuilder(pep_task.layout, "plain")(pep_task.queries[3])
    params = SamplingParams(n=3, max_tokens=12, seed=5)
    assert backend.sample(prompt, params) == backend.sample(prompt, params)
    greedy = backend.sample(prompt, SamplingParams(n=2, max_tokens=12, temperature=0))
    # same tokens; the two rows of one decode differ in the last digits of their logits, by no more
    # than batching moves llama.cpp's own log-probability of that text on this CPU
    assert greedy[0].text == greedy[1].text
    spread = llama_reference.spread(prompt, [f" {greedy[0].text}\n"])
    assert abs(greedy[0].logprob - greedy[1].logprob) <= max(spread, 0.01)
    reference = llama_reference.llm.create_completion(prompt, max_tokens=12, temperature=0, stop=["\n"])
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


def test_teacher_forced_scores_are_llama_cpp_own_log_probabilities(backend, pep_task, llama_reference):
    prompt = PromptBuilder(pep_task.layout, "personalized")(pep_task.queries[0])
    continuations = [" A Title About Hashing\n", " Deprecate modules\n", " Structural Pattern Matching\n"]
    pool = backend.score(prompt, continuations)
    # how far llama.cpp's own ways of decoding the same text apart (one pass, prompt then
    # continuation, token by token) differ on this CPU: its kernels depend on a decode's size
    spread = llama_reference.spread(prompt, continuations)
    for text, (logprob, n_tokens) in zip(continuations, pool):
        [(alone, alone_tokens)] = backend.score(prompt, [text])
        # one continuation after the cached prompt is exactly llama.cpp's own prompt-then-continuation
        assert alone == pytest.approx(llama_reference.logprob(prompt, text, "two"), abs=1e-3)
        assert n_tokens == alone_tokens == len(llama_reference.tokens(text))
        # the whole pool in one decode moves each sum by no more than batching moves llama.cpp's own
        assert abs(logprob - alone) <= max(spread, 0.01), (text, logprob, alone, spread)
    assert backend.score(prompt, [""]) == [(0.0, 0)]


def test_pmi_is_exactly_zero_when_both_prompts_are_the_same(backend, pep_task):
    from dataclasses import replace

    import pandas as pd

    from ttp.rewards.features import EmbeddingCache
    from ttp.rewards.zero_shot import zero_shot_scores

    # with no profile the personalized prompt is the plain one: pmi's two scores come from one
    # prompt, the second from the cache, and cancel exactly
    query = replace(pep_task.queries[2], profile=())
    assert PromptBuilder(pep_task.layout, "personalized")(query) == PromptBuilder(pep_task.layout, "plain")(query)
    pool = pd.DataFrame({"query_id": query.id, "user": query.user, "candidate": [0, 1],
                         "text": ["First title", "Second, longer candidate title"]})
    scores = zero_shot_scores(pool, {query.id: query}, pep_task.layout, backend, EmbeddingCache(), scorers=("pmi",))
    assert scores["pmi"].tolist() == [0.0, 0.0]
    # and with the user's profile the two prompts differ, and so do the scores
    with_profile = zero_shot_scores(pool.assign(query_id=pep_task.queries[2].id),
                                    {pep_task.queries[2].id: pep_task.queries[2]}, pep_task.layout, backend,
                                    EmbeddingCache(), scorers=("pmi",))
    assert (with_profile["pmi"] != 0).all()


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


def test_judge_is_the_log_odds_of_yes_against_no(backend, pep_task, llama_reference):
    import numpy as np

    from ttp.rewards.zero_shot import judge_prompt, judge_question, judge_scores

    query = pep_task.queries[4]
    prompt = judge_prompt(query, pep_task.layout)
    texts = ["Deprecate modules", "A title about hashing"]
    fast = judge_scores(backend, prompt, pep_task.layout, texts)   # one logit row per candidate

    from ttp.policy import SCORE, PolicyBackend

    class ScoresOnly(PolicyBackend):   # a backend with score() only, as a server is: both answers as continuations
        name = "scores only"
        capabilities = frozenset({SCORE})
        score = staticmethod(backend.score)

    generic = judge_scores(ScoresOnly(), prompt, pep_task.layout, texts)
    spread = max(llama_reference.spread(prompt, [judge_question(pep_task.layout, t) for t in texts]), 0.01)
    reference = llama_reference.llm
    token_yes, token_no = (reference.tokenize(t.encode(), add_bos=False, special=False) for t in (" yes", " no"))
    assert len(token_yes) == len(token_no) == 1
    for text, a, b in zip(texts, fast, generic):
        context = reference.tokenize((prompt + judge_question(pep_task.layout, text)).encode(), add_bos=True,
                                     special=False)
        reference.reset()
        reference.eval(context)
        logits = np.array(reference.scores[len(context) - 1], dtype=float)
        own = logits[token_yes[0]] - logits[token_no[0]]
        # one log-odds moves by no more than batching moves llama.cpp's own sum over the question;
        # the generic path's difference of two such sums, by no more than twice that
        assert abs(a - own) <= spread, (a, own, spread)
        assert abs(b - own) <= 2 * spread, (b, own, spread)
