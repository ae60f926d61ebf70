"""End to end on a small seeded slice of pep-titles with the real model, through the CLI."""
import json

import pytest
from typer.testing import CliRunner

from ttp.cli import app
from ttp.runs.config import ConfigError
from ttp.runs.folder import RunFolder
from ttp.runs.results import read_diagnoses

pytestmark = pytest.mark.slow

runner = CliRunner()
TASK = "PEP-titles"


@pytest.fixture(scope="module")
def run_folder(small_run):
    return small_run


def test_every_stage_writes_its_files(run_folder):
    folder = RunFolder(run_folder)
    for policy in ("personalized", "plain"):
        for path in (folder.pools(TASK, policy), folder.candidates(TASK, policy), folder.curves(TASK, policy),
                     folder.scores(TASK, policy), folder.reward_eval(TASK, policy), folder.diagnosis(TASK, policy),
                     folder.diagnosis_per_query(TASK, policy), folder.allocation(TASK, policy)):
            assert path.exists(), path
    report = folder.report.read_text()
    for heading in ("The oracle ceiling", "Reward models on held-out users", "Scaling-law diagnosis",
                    "The law as a controller"):
        assert heading in report
    figures = sorted(p.name for p in folder.figures.glob("*.png"))
    assert f"ceiling_{TASK}.png" in figures and f"law_{TASK}_personalized.png" in figures


def test_curves_hold_the_oracle_of_the_sampled_pools(run_folder, pep_titles_dir):
    """The stored oracle curve, recomputed from pools.jsonl and the gold titles by ROUGE alone:
    at N = 1 the mean utility, at N = M the mean of each pool's best candidate."""
    from ttp.tasks.data import load_task
    from ttp.tasks.utility import rouge

    folder = RunFolder(run_folder)
    golds = {q.id: q.gold for q in load_task(pep_titles_dir).queries}
    utilities = [rouge(json.loads(line)["texts"], golds[json.loads(line)["query_id"]])["rougeL"]
                 for line in folder.pools(TASK, "personalized").read_text().splitlines()]
    oracle = json.loads(folder.curves(TASK, "personalized").read_text())["rougeL"]["oracle"]["mean"]
    assert oracle[0] == pytest.approx(sum(u.mean() for u in utilities) / len(utilities))
    assert oracle[-1] == pytest.approx(sum(u.max() for u in utilities) / len(utilities))


def test_rerun_resumes_without_sampling_again(run_folder, pep_titles_dir):
    pools = RunFolder(run_folder).pools(TASK, "plain")
    before = pools.read_bytes()
    for command in (["run", "--out", str(run_folder)], ["resume", str(run_folder)]):   # the old spelling too
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert pools.read_bytes() == before


def test_another_config_in_the_same_folder_is_refused(run_folder, pep_titles_dir):
    result = runner.invoke(app, ["run", "--task", str(pep_titles_dir), "--out", str(run_folder), "--pool-size", "8"])
    assert result.exit_code != 0
    assert "another run's configuration" in str(result.exception)


def test_a_damaged_table_names_itself_and_the_command_that_writes_it_or_is_made_again(run_folder, tmp_path):
    import shutil

    import pandas as pd

    from ttp.files import DataFileError
    from ttp.runs.pipeline import Pipeline

    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    folder = RunFolder(copy)
    intact, scores = (pd.read_parquet(p) for p in (folder.candidates(TASK, "plain"), folder.scores(TASK, "plain")))
    # a table the next stage reads names the command that writes it
    for path, command, reader in ((folder.scores(TASK, "plain"), "ttp rewards", "diagnose"),
                                  (folder.candidates(TASK, "plain"), "ttp utilities", "curves")):
        path.write_text("not a table")
        with pytest.raises(DataFileError) as err:
            Pipeline.resume(copy).run(reader)
        assert str(err.value).startswith(f"{path} is not a readable table (")
        assert str(err.value).endswith(f"`{command} {copy}` writes it again") and "\n" not in str(err.value)
    # and that command makes it again, like any cache of the run (the features)
    folder.features(TASK, "plain").write_text("not a table")
    Pipeline.resume(copy).run("utilities")
    pd.testing.assert_frame_equal(pd.read_parquet(folder.candidates(TASK, "plain")), intact)
    Pipeline.resume(copy).run("rewards")
    assert len(pd.read_parquet(folder.features(TASK, "plain"))) == len(intact)
    pd.testing.assert_frame_equal(pd.read_parquet(folder.scores(TASK, "plain")), scores)


def test_missing_utilities_and_split_users_give_clear_errors(run_folder, tmp_path):
    import shutil

    from ttp.runs.pipeline import Pipeline

    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    folder = RunFolder(copy)
    folder.candidates(TASK, "plain").unlink()
    folder.features(TASK, "plain").unlink()
    with pytest.raises(FileNotFoundError, match=f"candidates.parquet is missing: run `ttp utilities {copy}` first"):
        Pipeline.resume(copy).run("rewards")
    split = json.loads(folder.split(TASK).read_text())
    split["test"] = split["test"][1:]
    folder.split(TASK).write_text(json.dumps(split))
    with pytest.raises(ConfigError, match="are in no part of"):
        Pipeline.resume(copy)
    assert folder.reward_eval(TASK, "personalized").exists()  # earlier results are kept


def test_generate_spends_at_most_the_budget_and_returns_a_candidate(run_folder):
    from ttp.personalize import Personalizer

    personalizer = Personalizer.from_run(run_folder, TASK)
    test_user = json.loads(RunFolder(run_folder).split(TASK).read_text())["test"][0]
    query = next(q for q in personalizer.task.queries if q.user == test_user)
    decision = personalizer.generate(query, budget=5).decision
    assert 1 <= decision.samples <= 5
    assert decision.text in decision.candidates and len(decision.candidates) == decision.samples
    assert decision.score == max(decision.scores) and len(decision.scores) == decision.samples
    assert (decision.stopped_because == "budget spent") == (decision.samples == 5)
    result = runner.invoke(app, ["generate", str(run_folder), "--task-name", TASK, "--user", query.user,
                                 "--text", query.input, "--budget", "3"])
    assert result.exit_code == 0, result.output
    assert "samples spent" in result.output


def test_a_second_run_on_the_same_folder_stops_and_leaves_no_duplicates(tmp_path, pep_titles_dir):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "ttp.cli", "run", "--task", str(pep_titles_dir), "--out", str(out),
            "--pool-size", "2", "--max-users", "6", "--max-queries-per-user", "1", "--max-tokens", "6",
            "--stages", "sample"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / ".lock.holder").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        second = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.startswith(f"ttp: error: {out} is in use by process {first.pid}")
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    for pools in out.glob("*/*/pools.jsonl"):
        ids = [json.loads(line)["query_id"] for line in pools.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 6


def test_imported_scores_are_judged_like_trained_reward_models(run_folder, tmp_path):
    import pandas as pd

    folder = RunFolder(run_folder)
    candidates = pd.read_parquet(folder.candidates(TASK, "personalized"))
    for name, score in (("copy_of_utility", candidates["rougeL"]), ("constant", 0.5)):
        rows = candidates[["query_id", "candidate"]].assign(score=score)
        rows.to_json(tmp_path / f"{name}.jsonl", orient="records", lines=True)
    for name in ("copy_of_utility", "flat"):
        source = "copy_of_utility" if name == "copy_of_utility" else "constant"
        result = runner.invoke(app, ["scores", str(run_folder), str(tmp_path / f"{source}.jsonl"), "--task-name", TASK,
                                     "--prompting", "personalized", "--name", name])
        assert result.exit_code == 0, result.output + repr(result.exception)
    evaluation = json.loads(folder.reward_eval(TASK, "personalized").read_text())
    oracle, selectors = evaluation["oracle"]["mean"], evaluation["selectors"]
    assert selectors["copy_of_utility"]["curve"]["mean"] == pytest.approx(oracle)
    assert selectors["flat"]["curve"]["mean"] == pytest.approx([oracle[0]] * len(oracle))
    diagnosis = read_diagnoses(folder, TASK, "personalized")
    assert diagnosis["flat"].collapse_rate == 1.0
    copy = diagnosis["copy_of_utility"].per_query
    assert all(r == pytest.approx(1.0) for r, flat in zip(copy["rho"], copy["flat"]) if not flat)
    assert "copy_of_utility" in folder.report.read_text()


def test_zero_shot_scorers_are_judged_on_held_out_users(run_folder):
    result = runner.invoke(app, ["zero-shot", str(run_folder)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    import pandas as pd

    from ttp.analysis.bon import bon_curves, oracle_curves
    from ttp.analysis.pools import Pools
    from ttp.rewards.selection import Selector
    from ttp.tasks.utility import PRIMARY

    evaluation = json.loads(RunFolder(run_folder).reward_eval(TASK, "plain").read_text())
    # each scorer's share of the oracle gain, from its stored scores on the test pools by hand
    test = Pools.from_frame(pd.read_parquet(RunFolder(run_folder).scores(TASK, "plain", "test")))
    m, oracle = evaluation["pool_size"], oracle_curves(test[PRIMARY]).mean(0)
    for name in ("likelihood", "pmi", "judge", "profile_similarity", "mbr", "mbr_profile"):
        share = evaluation["selectors"][name]["oracle_gain_share"][str(m)][0]
        bon = bon_curves(test[Selector.parse(name).column], test[PRIMARY]).mean(0)
        assert share == pytest.approx((bon[m - 1] - bon[0]) / (oracle[m - 1] - oracle[0]))
    diagnosis = json.loads(RunFolder(run_folder).diagnosis(TASK, "plain").read_text())
    assert {"likelihood", "pmi", "judge", "profile_similarity", "mbr", "mbr_profile"} <= set(diagnosis)
    # mbr's stored scores are the consensus of each stored pool
    from ttp.rewards.consensus import mbr_scores

    candidates = pd.read_parquet(RunFolder(run_folder).candidates(TASK, "plain"))
    mbr = pd.read_parquet(RunFolder(run_folder).external_scores(TASK, "plain", "mbr"))
    first = mbr.query_id.iloc[0]
    texts = candidates[candidates.query_id == first].sort_values("candidate")["text"].tolist()
    assert mbr[mbr.query_id == first].sort_values("candidate")["score"].to_numpy() == pytest.approx(mbr_scores(texts))
    # a second call computes nothing new: every scorer's file is there already
    stored = RunFolder(run_folder).external_scores(TASK, "plain", "judge")
    written = stored.stat().st_mtime_ns
    again = runner.invoke(app, ["zero-shot", str(run_folder)])
    assert again.exit_code == 0 and stored.stat().st_mtime_ns == written
    bad = runner.invoke(app, ["zero-shot", str(run_folder), "--scorer", "vibes"])
    assert bad.exit_code == 2 and "'vibes'" in bad.output and "profile_similarity" in bad.output
    # the stored likelihood is the backend's teacher-forced mean log-probability of the candidate
    from ttp.policy.llama_cpp import LlamaCppBackend
    from ttp.tasks.data import load_task
    from ttp.tasks.prompts import PromptBuilder, as_generated

    folder = RunFolder(run_folder)
    stored = pd.read_parquet(folder.external_scores(TASK, "plain", "likelihood"))
    query_id = stored.query_id.iloc[0]
    pool = pd.read_parquet(folder.candidates(TASK, "plain")).query("query_id == @query_id").sort_values("candidate")
    task = load_task(json.loads(folder.config.read_text())["tasks"][0]["path"])
    # the pool scored in one call, as the stage scores it, by a fresh backend
    scored = LlamaCppBackend(n_ctx=4096, max_sequences=8).score(
        PromptBuilder(task.layout, "personalized")(task.by_id()[query_id]), [as_generated(t) for t in pool.text])
    mine = stored[stored.query_id == query_id].sort_values("candidate").score.to_numpy()
    assert mine == pytest.approx([logprob / n_tokens for logprob, n_tokens in scored], rel=1e-5)


def test_compare_trains_every_family_and_prints_one_table(run_folder):
    import numpy as np

    from ttp.policy.llama_cpp import default_model_path
    from ttp.rewards.cross_encoder import CrossEncoderRewardModel
    from ttp.rewards.models import RewardModel

    result = runner.invoke(app, ["compare", str(run_folder)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    folder = RunFolder(run_folder)
    assert json.loads(folder.config.read_text())["families"] == ["features", "hidden_state", "cross_encoder", "lm"]
    assert "families compared" in result.output
    evaluation = json.loads(folder.reward_eval(TASK, "personalized").read_text())["selectors"]
    for name in ("hidden_state.pointwise", "hidden_state.bradley_terry", "hidden_state.probabilistic/lcb",
                 "cross_encoder.pointwise", "cross_encoder.bradley_terry", "cross_encoder.probabilistic/p_improve",
                 "lm.pointwise", "lm.bradley_terry", "lm.probabilistic/lcb", "lm.thurstone/p_improve"):
        assert name in evaluation, name
    # the lm model is adapters and a head in safetensors, on the embedded Gemma's weights
    lm_folder = folder.reward_model(TASK, "personalized", "lm.thurstone")
    assert sorted(p.name for p in lm_folder.iterdir()) == ["model.json", "weights.safetensors"]
    assert json.loads((lm_folder / "model.json").read_text())["config"]["reading"]["model"] == "embedded"
    # the hidden-state model records what it reads, and reads 640 states per candidate
    hidden = RewardModel.load(folder.reward_model(TASK, "personalized", "hidden_state.pointwise"))
    assert hidden.n_features_in_ == 640 and hidden.inputs_["layer"].startswith("result_norm")
    assert hidden.inputs_["policy_model"] == f"llama.cpp:{default_model_path().name}"
    with np.load(folder.hidden_states(TASK, "personalized"), allow_pickle=False) as cache:
        assert cache["states"].shape[1] == 640
    encoder = CrossEncoderRewardModel.load(folder.reward_model(TASK, "plain", "cross_encoder.probabilistic"))
    assert encoder.is_probabilistic and (folder.reward_model(TASK, "plain", "cross_encoder.probabilistic")
                                         / "tokenizer.json").exists()
    assert "| hidden_state | probabilistic | lcb |" in folder.report.read_text()
    # a rerun loads every model and reuses the cached states: the scores do not move
    before = folder.scores(TASK, "plain").read_bytes()
    result = runner.invoke(app, ["compare", str(run_folder)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_parquet(folder.scores(TASK, "plain")),
                                  pd.read_parquet(__import__("io").BytesIO(before)))
    # the trained families can pick at test time: the personalizer reads what each model reads
    from ttp.personalize import Personalizer
    from ttp.rewards.cross_encoder import pair_texts
    from ttp.rewards.lm import PoolTexts
    from ttp.tasks.prompts import PromptBuilder, as_generated

    test_user = json.loads(folder.split(TASK).read_text())["test"][0]
    for selector in ("cross_encoder.probabilistic/mean", "hidden_state.pointwise", "lm.bradley_terry"):
        personalizer = Personalizer.from_run(run_folder, TASK, selector=selector)
        query = next(q for q in personalizer.task.queries if q.user == test_user)
        decision = personalizer.generate(query, budget=3, rule="uniform").decision
        frame = pd.DataFrame({"query_id": query.id, "text": decision.candidates})
        if selector.startswith("cross_encoder"):
            expected = personalizer.scorer.model.predict(pair_texts(frame, {query.id: query}))
        elif selector.startswith("lm"):
            prompt = PromptBuilder(personalizer.task.layout, "personalized")(query)
            pools = PoolTexts({query.id: prompt}, [as_generated(t) for t in decision.candidates],
                              np.array([query.id] * len(decision.candidates)))
            expected = personalizer.scorer.model.predict(pools)
        else:
            prompt = PromptBuilder(personalizer.task.layout, "personalized")(query)
            states = personalizer.backend.hidden_states(prompt, [as_generated(t) for t in decision.candidates])
            expected = personalizer.scorer.model.predict(np.stack(states))
        np.testing.assert_allclose(decision.scores, expected, rtol=1e-4, atol=1e-5)
        assert decision.score == max(decision.scores)
    result = runner.invoke(app, ["generate", str(run_folder), "--task-name", TASK, "--user", query.user,
                                 "--text", query.input, "--budget", "2", "--selector", "vibes/mean"])
    assert result.exit_code != 0 and "is not one of this run's" in str(result.exception)
    for selector in ("pointwise/lcb", "cross_encoder.probabilistic"):   # a rule the model lacks, a rule missing
        with pytest.raises(ValueError, match="is not one of this run's"):
            Personalizer.from_run(run_folder, TASK, selector=selector)
    # the stopping rule belongs to the selector that picks: the allocate stage chose it on
    # validation users for every trained selector, and the personalizer only reads it
    from ttp.analysis.allocation import OnlineRule
    from ttp.analysis.control import ControllerConfig
    from ttp.analysis.pools import Pools
    from ttp.rewards.selection import Selector
    from ttp.tasks.utility import PRIMARY

    other = "cross_encoder.probabilistic/mean"
    path = folder.online_rules(TASK, "personalized")
    rules = json.loads(path.read_text())
    assert other in rules and "ensemble/lcb" in rules and not {"random", "likelihood"} & set(rules)
    validation = Pools.from_frame(pd.read_parquet(folder.scores(TASK, "personalized", "validation")))
    column = Selector.parse(other).column
    assert OnlineRule(**rules[other]) == OnlineRule.choose(validation[column], validation[PRIMARY], validation.users,
                                                           ControllerConfig(collapse_tau=0.1), seed=0)
    written = path.read_text()
    # "law" is never chosen on validation users: what the personalizer uses is what the file says
    path.write_text(json.dumps({**rules, other: {**rules[other], "rule": "law", "kappa": 0.5}}))
    try:
        chosen = Personalizer.from_run(run_folder, TASK, backend=personalizer.backend, selector=other)
        assert (chosen.rule, chosen.kappa) == ("law", 0.5)
        path.unlink()   # before the allocate stage has run: the full budget, and a warning that says so
        with pytest.warns(UserWarning, match="ttp allocate"):
            assert Personalizer.from_run(run_folder, TASK, backend=personalizer.backend).rule == "uniform"
    finally:
        path.write_text(written)


def test_ttp_serve_picks_with_the_lm_reward_model(run_folder, tmp_path):
    """After `ttp compare`: `ttp serve --selector lm.thurstone/mean` answers the OpenAI client with
    the candidate that the saved lm model scores highest, read as the family reads one query."""
    import subprocess
    import sys

    import numpy as np
    import openai

    from ttp.local_servers import free_port, wait_until_up
    from ttp.rewards.lm import LMRewardModel, PoolTexts
    from ttp.tasks.data import Query, load_task
    from ttp.tasks.prompts import PromptBuilder, as_generated, profile_for

    folder = RunFolder(run_folder)
    if not folder.reward_model(TASK, "personalized", "lm.thurstone").exists():
        assert runner.invoke(app, ["compare", str(run_folder), "--family", "lm"]).exit_code == 0
    model = LMRewardModel.load(folder.reward_model(TASK, "personalized", "lm.thurstone"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ttp.cli", "serve", str(run_folder), "--task-name", TASK,
                             "--db", str(tmp_path / "profiles.sqlite"), "--port", str(port),
                             "--selector", "lm.thurstone/mean"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", proc, timeout_s=180)
        task = load_task(json.loads(folder.config.read_text())["tasks"][0]["path"])
        user = json.loads(folder.split(TASK).read_text())["test"][0]
        query = next(q for q in task.queries if q.user == user)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=180)
        r = client.completions.create(model="ttp", user=user, max_tokens=10, prompt=query.input,
                                      extra_body={"ttp": {"budget": 3}})
        meta = r.model_extra["ttp"]
        assert meta["personalized"] and meta["selector"] == "lm.thurstone/mean"
        # the query as the server makes it: the user's profile less any item of this very input
        items = {item.id: item for q in task.queries if q.user == user for item in q.profile}
        served = Query("served", user, query.input, profile_for(tuple(items.values()), query.input), gold="")
        prompt = PromptBuilder(task.layout, "personalized")(served)
        texts = PoolTexts({"q": prompt}, [as_generated(t) for t in meta["candidates"]],
                          np.array(["q"] * len(meta["candidates"])))
        np.testing.assert_allclose(meta["scores"], model.predict(texts), rtol=1e-4, atol=1e-5)
        assert r.choices[0].text == meta["candidates"][int(np.argmax(meta["scores"]))]
    finally:
        proc.kill()
        proc.wait()
