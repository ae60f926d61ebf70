"""The ``lm`` reward model: the pairwise Gaussian likelihood by hand, the shared-context reading
against one pass per candidate, training, saving and loading (a tiny random model, fast), and
a planted preference that only a text-reading model can learn (the embedded Gemma, slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_model import WORDS

from ttp.rewards.lm import LMConfig, LMRewardModel, PoolTexts, Reading, encode_pools
from ttp.rewards.models import ModelFileError
from ttp.rewards.objectives import OBJECTIVES, TrainingData, within_pool_pairs


def test_pairwise_gaussian_likelihood_by_hand():
    out = torch.tensor([[0.3, 0.1], [-0.2, -1.0], [1.1, 0.5]])
    y = torch.tensor([1.0, 0.0, 2.0])
    pairs = within_pool_pairs(y.numpy(), np.zeros(3))
    floor = 1e-3
    var = [math.log1p(math.exp(float(v))) + floor for v in out[:, 1]]
    expected = []
    for win, lose in zip(*pairs):
        z = (float(out[win, 0]) - float(out[lose, 0])) / math.sqrt(var[win] + var[lose])
        expected.append(-math.log(0.5 * math.erfc(-z / math.sqrt(2))))
    got = OBJECTIVES["thurstone"].loss(out, TrainingData(None, y, pairs), variance_floor=floor)
    assert len(expected) == 3
    assert float(got) == pytest.approx(sum(expected) / 3, rel=1e-6)


def _pools(seed: int, pools: int = 6, size: int = 5) -> tuple[PoolTexts, np.ndarray]:
    rng = np.random.default_rng(seed)
    contexts, candidates, ids, y = {}, [], [], []
    for p in range(pools):
        contexts[f"q{seed}-{p}"] = "title: " + " ".join(rng.choice(WORDS, 12)) + "\ntitle:"
        for _ in range(size):
            marked = rng.random() < 0.5
            words = list(rng.choice(WORDS[5:], int(rng.integers(2, 6)))) + (["zebra"] if marked else [])
            candidates.append(" " + " ".join(rng.permutation(words)) + "\n")
            ids.append(f"q{seed}-{p}")
            y.append(float(marked) + 0.1 * rng.random())
    return PoolTexts(contexts, candidates, np.array(ids)), np.array(y)


@pytest.mark.slow
def test_the_shared_context_reads_what_one_pass_per_candidate_reads(tiny_model):
    from transformers import AutoModel

    reading = Reading(model=str(tiny_model), tuned_layers=2)
    backbone = reading.backbone()
    texts, _ = _pools(0, pools=1, size=4)
    context = texts.contexts[texts.pools[0]]
    shared = backbone.run_top(backbone.new_top(), backbone.encode_pool(context, texts.candidates))
    whole = AutoModel.from_pretrained(tiny_model).eval()
    ids, pieces = backbone.tokens(context, texts.candidates)
    with torch.no_grad():
        one_by_one = torch.stack([whole(input_ids=torch.tensor([ids + p])).last_hidden_state[0, -1] for p in pieces])
    assert len({len(p) for p in pieces}) > 1          # the padding of shorter candidates is exercised
    torch.testing.assert_close(shared, one_by_one, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fit_predict_save_load(tiny_model, tmp_path):
    reading = Reading(model=str(tiny_model), tuned_layers=2)
    train, y = _pools(1)
    val, y_val = _pools(2, pools=3)
    X, X_val = encode_pools(train, reading), encode_pools(val, reading)
    for kind in ("pointwise", "bradley_terry", "probabilistic", "thurstone"):
        model = LMRewardModel(LMConfig(kind=kind, reading=reading, max_epochs=2))
        model.fit(X, y, train.pools, X_val, y_val, val.pools)
        scores = model.predict(val)                    # texts are encoded on the fly, to the same scores
        np.testing.assert_allclose(scores, model.predict(X_val), rtol=1e-5, atol=1e-6)
        # a subset of a pool's rows, out of order, gets the same scores as in the whole pool
        rows = np.array([4, 1, 0])
        np.testing.assert_allclose(model.predict(X_val[rows]), scores[rows], rtol=1e-5, atol=1e-6)
        model.save(tmp_path / kind, {"family": "lm"})
        loaded = LMRewardModel.load(tmp_path / kind)
        np.testing.assert_allclose(loaded.predict(X_val), scores, rtol=1e-5, atol=1e-6)
        if kind in ("probabilistic", "thurstone"):
            mean, sd = loaded.predict(X_val, return_std=True)
            assert (sd > 0).all() and np.allclose(mean, scores, atol=1e-6)
        else:
            with pytest.raises(TypeError):
                loaded.predict(X_val, return_std=True)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))


def test_a_damaged_or_foreign_model_file_is_refused(tiny_model, tmp_path):
    reading = Reading(model=str(tiny_model), tuned_layers=2)
    texts, y = _pools(3, pools=2)
    model = LMRewardModel(LMConfig(kind="pointwise", reading=reading, max_epochs=1)).fit(texts, y, texts.pools)
    model.save(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"not tensors")
    with pytest.raises(ModelFileError, match="weights|safetensors|lm reward model"):
        LMRewardModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match="tuned_layers"):
        Reading(model=str(tiny_model), tuned_layers=4).backbone()


TOPICS = ("packaging", "typing", "asyncio", "imports", "unicode", "garbage collection", "decorators", "dataclasses")


def _planted_task(users: int, seed: int):
    """One query per user, pools of 8 titles, each carrying the word "zebra" or the word "system".
    Half the users favour one, half the other: a user's good titles carry the word that their
    profile's abstracts name as their favourite.  The hand features read the profile's titles,
    not its abstracts, and see the same two kinds of titles for every user, so the preference
    is in the text that only a model reading the whole prompt sees."""
    import pandas as pd

    from ttp.tasks.data import ProfileItem, Query

    rng = np.random.default_rng(seed)
    queries, rows = {}, []
    for u in range(users):
        # drawn apart, so that no topic tells the favourite
        topic, favourite = TOPICS[int(rng.integers(len(TOPICS)))], ("zebra", "system")[u % 2]
        profile = tuple(ProfileItem(f"u{seed}-{u}-{i}", f"A proposal on {t} for Python",
                                    f"This PEP describes {t}. My favourite word: {favourite}.")
                        for i, t in enumerate(rng.choice(TOPICS, 3, replace=False)))
        query = Query(f"q{seed}-{u}", f"u{seed}-{u}", f"Generate a title for the following abstract of a paper: "
                      f"This PEP proposes changes to {topic} in the standard library.", profile, "")
        queries[query.id] = query
        for c in range(8):
            word = ("zebra", "system")[c % 2]
            words = ["Improving", topic, "with", word, "support"]
            order = rng.permutation(len(words)) if rng.random() < 0.5 else np.arange(len(words))
            rows.append({"query_id": query.id, "user": query.user, "candidate": c,
                         "text": " ".join(words[i] for i in order),
                         "utility": float(word == favourite) + 0.05 * rng.random()})
    return queries, pd.DataFrame(rows)


@pytest.mark.slow
def test_a_planted_word_preference_is_learnt_by_the_lm_and_not_by_the_feature_mlp(tmp_path):
    from ttp.analysis.stats import within_pool_correlation
    from ttp.rewards.families import FAMILIES, Inputs
    from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
    from ttp.rewards.models import RewardModel
    from ttp.tasks.data import LAYOUTS

    def inputs(queries):
        return Inputs(queries, LAYOUTS["lamp5-title"], 3, "ttp", lambda: None, EmbeddingCache(tmp_path / "e.npz"),
                      "none", track=lambda description, total: __import__("contextlib").nullcontext(lambda: None))

    (train_q, train), (val_q, val) = _planted_task(24, 0), _planted_task(8, 1)
    family = FAMILIES["lm"]
    X, _ = family.batch_inputs(train, inputs(train_q))
    X_val, _ = family.batch_inputs(val, inputs(val_q))
    lm = family.new_model("bradley_terry", reading=X.reading).fit(X, train.utility, train.query_id)
    lm_rho = within_pool_correlation(lm.predict(X_val), val.utility.to_numpy(), groups=val.query_id.to_numpy()).mean()

    features = {name: candidate_features(frame.assign(logprob=0.0, n_tokens=1), q, EmbeddingCache(), k=3)
                for name, (q, frame) in {"train": (train_q, train), "val": (val_q, val)}.items()}
    mlp = RewardModel(kind="bradley_terry").fit(features["train"][list(FEATURES)], train.utility, train.query_id)
    mlp_rho = within_pool_correlation(mlp.predict(features["val"][list(FEATURES)]), val.utility.to_numpy(),
                                      groups=val.query_id.to_numpy()).mean()
    assert lm_rho > 0.6, (lm_rho, mlp_rho)
    assert mlp_rho < 0.3 and lm_rho > mlp_rho + 0.4, (lm_rho, mlp_rho)
