"""The untrained consensus selectors: mbr against a brute-force loop over the pool, mbr_profile
against the user's own outputs, and both through the zero-shot scorers with no model."""
import numpy as np
import pandas as pd
import pytest

from ttp.rewards.consensus import mbr_scores, profile_agreement
from ttp.rewards.features import EmbeddingCache
from ttp.rewards.zero_shot import zero_shot_scores
from ttp.tasks.data import ProfileItem, Query
from ttp.tasks.utility import rouge

POOL = ["fast import caching for modules", "module import caching", "a cache for fast imports",
        "unrelated words about zebras", "import caching"]


def test_mbr_is_each_candidates_mean_rouge_l_against_the_rest_of_its_pool():
    brute = [np.mean([rouge([c], other)["rougeL"][0] for j, other in enumerate(POOL) if j != i])
             for i, c in enumerate(POOL)]
    assert mbr_scores(POOL) == pytest.approx(brute)
    assert int(np.argmin(mbr_scores(POOL))) == 3                  # the outlier is the consensus's last
    assert mbr_scores(["alone"]).tolist() == [0.0]
    assert mbr_scores(POOL, "lamp") != pytest.approx(mbr_scores(POOL))   # the convention's stemming counts


def test_mbr_profile_is_the_mean_rouge_l_against_the_users_past_outputs():
    profile = (ProfileItem("a", "Zebras of the savanna", ""), ProfileItem("b", "Zebras at night", ""))
    query = Query("q", "u", "x", profile, gold="")
    scores = profile_agreement(POOL, query)
    assert int(np.argmax(scores)) == 3
    assert scores[3] == pytest.approx(np.mean([rouge([POOL[3]], o)["rougeL"][0] for o in
                                               ("Zebras of the savanna", "Zebras at night")]))


def test_the_consensus_scorers_need_no_model(pep_task):
    query = pep_task.queries[0]
    pool = pd.DataFrame({"query_id": query.id, "candidate": range(len(POOL)), "text": POOL})
    table = zero_shot_scores(pool, {query.id: query}, pep_task.layout, None, EmbeddingCache(),
                             scorers=("mbr", "mbr_profile"))
    assert table["mbr"].to_numpy() == pytest.approx(mbr_scores(POOL))
    assert table["mbr_profile"].to_numpy() == pytest.approx(profile_agreement(POOL, query))
