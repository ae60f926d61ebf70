"""The text-reading cross-encoder learns a planted textual signal, and saves as data."""
import numpy as np
import pandas as pd
import pytest

from ttp.analysis.bon import bon_curves, oracle_curves
from ttp.rewards.cross_encoder import CrossEncoderConfig, CrossEncoderRewardModel, encode, pair_texts

pytestmark = pytest.mark.slow

WORDS = ("river", "castle", "engine", "garden", "violin", "harbor", "comet", "forest", "marble", "tunnel",
         "lantern", "meadow", "copper", "falcon", "glacier", "orchard")


def planted(n_pools: int, seed: int, pool_size: int = 8):
    """Each user writes titles with one signature word; a candidate's utility is 1 when it
    carries that word (the context shows it) and 0 otherwise, plus a little noise."""
    rng = np.random.default_rng(seed)
    pairs, utility, groups = [], [], []
    for pool in range(n_pools):
        signature, *others = rng.choice(WORDS, size=4, replace=False)
        context = " | ".join(f"A study of the {signature} {w}" for w in others) + " · an abstract about things"
        for c in range(pool_size):
            has = rng.random() < 0.4
            word = signature if has else rng.choice([w for w in WORDS if w != signature])
            pairs.append((f"Notes on the {word} {rng.choice(WORDS)}", context))
            utility.append(float(has) + 0.05 * rng.random())
            groups.append(f"q{seed}-{pool}")
    return pairs, np.array(utility), np.array(groups)


def best_of_n_share(scores, utility, pool_size=8, n=4):
    s, u = scores.reshape(-1, pool_size), utility.reshape(-1, pool_size)
    curve, oracle = bon_curves(s, u).mean(0), oracle_curves(u).mean(0)
    return (curve[n - 1] - curve[0]) / (oracle[n - 1] - oracle[0])


@pytest.mark.parametrize("kind", ["pointwise", "bradley_terry", "probabilistic"])
def test_learns_the_signature_word_and_its_best_of_n_rises(kind, tmp_path):
    config = CrossEncoderConfig(kind=kind, max_length=32, max_epochs=5, pools_per_batch=2)
    train, val, test = planted(40, 0), planted(12, 1), planted(15, 2)
    model = CrossEncoderRewardModel(config).fit(*train, *val)
    scores = model.predict(test[0])
    assert best_of_n_share(scores, test[1]) > 0.5
    model.save(tmp_path / "model")
    loaded = CrossEncoderRewardModel.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(test[0]), scores)
    if kind == "probabilistic":
        mean, sd = loaded.predict(test[0], return_std=True)
        assert np.all(sd > 0) and np.array_equal(mean, scores)
    else:
        with pytest.raises(TypeError, match="scores only"):
            loaded.predict(test[0], return_std=True)


def test_the_context_is_cut_before_the_candidate(pep_task):
    from ttp.rewards import minilm
    from ttp.rewards.cross_encoder import _tokenizer, tokenize
    from ttp.tasks.prompts import QUERY_CHARS, retrieve, split_instruction

    query = pep_task.queries[0]
    frame = pd.DataFrame({"query_id": [query.id], "text": ["A title " * 3]})
    [(candidate, context)] = pair_texts(frame, pep_task.by_id())
    examples = " | ".join(item.output.strip() for item in retrieve(query, 3))
    assert candidate == "A title " * 3
    assert context == f"{examples} · {split_instruction(query.input)[1][:QUERY_CHARS]}"
    config = CrossEncoderConfig(max_length=32, tuned_layers=1)
    tokenizer = _tokenizer(minilm.package().get_model_path())
    [ids] = tokenize([(candidate, context * 20)], config, tokenizer)["input_ids"].tolist()
    own = tokenizer(candidate, add_special_tokens=False)["input_ids"]
    # [CLS] candidate [SEP] as much of the context as fits [SEP]: every token of the candidate survives
    assert len(ids) == 32 and ids[:len(own) + 2] == [tokenizer.cls_token_id, *own, tokenizer.sep_token_id]
    assert ids[-1] == tokenizer.sep_token_id and tokenizer.pad_token_id not in ids
    encoding = encode([(candidate, context * 20)], config)
    assert encoding.states.shape == (1, 32, 384) and int(encoding.mask.sum()) == 32
    # a runaway candidate longer than the whole budget is cut too, instead of failing the run
    runaway = encode([("x1 " * 200, "short context")], config)
    assert runaway.states.shape == (1, 32, 384)


def test_a_model_tuned_on_other_base_weights_is_refused(tmp_path):
    import json

    from ttp.rewards.models import ModelFileError

    train = planted(6, 0)
    model = CrossEncoderRewardModel(tuned_layers=1, max_length=32, max_epochs=1).fit(*train)
    model.save(tmp_path / "m")
    settings = json.loads((tmp_path / "m" / "model.json").read_text())
    settings["base_sha256"] = "0" * 64
    (tmp_path / "m" / "model.json").write_text(json.dumps(settings))
    with pytest.raises(ModelFileError, match="other .* weights than the installed ones"):
        CrossEncoderRewardModel.load(tmp_path / "m")
