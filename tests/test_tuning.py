"""``ttp tune`` (``ttp.tuning``): the examples a policy is tuned on keep every held-out gold out,
the tune resumes to the weights an uninterrupted one gives, and the GGUF it writes gives the
tuned weights' next-token distribution within llama.cpp's own error."""
import json
from dataclasses import replace

import pytest

from ttp.runs.config import ConfigError
from ttp.tasks.data import split_users
from ttp.tasks.prompts import record_text, same_record
from ttp.tuning import TuneConfig, users_with_learnt_golds
from ttp.tuning.examples import training_examples
from ttp.tuning.gguf_export import ExportError, gguf_name
from ttp.tuning.lora import LoraConfig

SPLIT = (0.45, 0.15, 0.4)


def test_no_held_out_gold_enters_training_even_as_a_co_authors_query(pep_task):
    split = split_users(pep_task.users, SPLIT, seed=0)
    held_out = [q for q in pep_task.queries if q.user not in split.train]
    target = held_out[0]
    # a training user (a co-author) has the held-out PEP as a query of their own
    author = split.train[0]
    twin = replace(target, id="twin", user=author)
    task = replace(pep_task, queries=(*pep_task.queries, twin))
    examples = training_examples(task, split, items_per_user=50, seed=0)
    held_golds = {" ".join(q.gold.split()) for q in held_out}
    held = [record_text(q.input) for q in held_out]
    assert examples
    for example in examples:
        assert example.target.strip() not in held_golds, example.id
        source = example.prompt.split("\n\nAbstract: ", 1)[1].rsplit("\nTitle:", 1)[0]
        assert not any(same_record(record_text(source), h) for h in held), example.id
    assert "twin" not in {e.id for e in examples}
    assert {e.user for e in examples if e.kind == "query"} <= set(split.train)
    # held-out users still give their profile items (an input of the task, not a gold)
    assert {e.user for e in examples if e.kind == "profile"} & set(split.test)


def test_examples_are_the_plain_prompt_then_the_gold_to_the_newline(pep_task):
    split = split_users(pep_task.users, SPLIT, seed=0)
    examples = training_examples(pep_task, split, items_per_user=2, seed=0)
    query = next(e for e in examples if e.kind == "query")
    gold = pep_task.by_id()[query.id].gold
    assert query.target == f" {' '.join(gold.split())}\n"
    assert query.prompt.startswith("Generate a title for the following abstract of a paper.\n\nAbstract: ")
    assert query.prompt.endswith("\nTitle:") and "\n\nTitle:" not in query.prompt   # no few-shot examples
    assert examples == training_examples(pep_task, split, items_per_user=2, seed=0)   # seeded


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="items_per_user"):
        TuneConfig(items_per_user=0)
    assert gguf_name("layers.3.self_attn.o_proj") == "blk.3.attn_output.weight"
    with pytest.raises(ExportError, match="mlp"):
        gguf_name("layers.3.mlp.down_proj")


def test_a_run_refuses_a_model_tuned_on_the_golds_of_users_it_holds_out(tmp_path, pep_titles_dir):
    from ttp.policy.registry import EngineConfig
    from ttp.runs.config import RunConfig, TaskSpec
    from ttp.runs.pipeline import Pipeline
    from ttp.tasks.data import load_task

    model = tmp_path / "tuned"
    model.mkdir()
    (model / "tuned.gguf").write_bytes(b"")
    split = split_users(load_task(pep_titles_dir).users, (0.6, 0.2, 0.2), seed=0)
    (model / "tune.json").write_text(json.dumps({"query_users": [split.test[0]]}))
    assert users_with_learnt_golds(model / "tuned.gguf") == {split.test[0]}
    config = RunConfig(tasks=(TaskSpec(path=str(pep_titles_dir)),), split=(0.6, 0.2, 0.2),
                       engine=EngineConfig(model_path=str(model)))
    with pytest.raises(ConfigError, match="tuned on the golds"):
        Pipeline(config, tmp_path / "run", show_progress=False)
    relative = config.changed(engine=EngineConfig(model_path="../tuned"))     # read from the run folder
    with pytest.raises(ConfigError, match=f"{model} was tuned on the golds"):
        Pipeline(relative, tmp_path / "run", show_progress=False)
    (model / "tune.json").write_text(json.dumps({"query_users": list(split.train)}))
    Pipeline(config, tmp_path / "run2", show_progress=False)      # the run's own training users: fine


@pytest.mark.slow
def test_tune_resumes_exactly_and_its_gguf_gives_the_tuned_distribution(tmp_path, pep_titles_dir):
    from safetensors.torch import load_file

    from ttp.policy import SamplingParams
    from ttp.policy.llama_cpp import LlamaCppBackend
    from ttp.tasks.data import load_task
    from ttp.tuning import tune

    task = load_task(pep_titles_dir)
    import torch

    config = TuneConfig(max_examples=6, lora=LoraConfig(accumulation=2, checkpoint_every=1, learning_rate=2e-3,
                                                        threads=1))
    threads_before = torch.get_num_threads()

    def stop_after_two(step, steps, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(task, tmp_path / "resumed", config, on_step=stop_after_two)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())["losses"].__len__() == 2
    steps_seen = []
    resumed = tune(task, tmp_path / "resumed", config,
                   on_step=lambda step, steps, loss: steps_seen.append((step, torch.get_num_threads())))
    assert steps_seen == [(3, 1)]              # only the step left is trained, on the pinned thread count
    assert torch.get_num_threads() == threads_before                # and the caller's count is restored
    straight = tune(task, tmp_path / "straight", config)
    a = load_file(tmp_path / "resumed" / "checkpoint" / "adapter.safetensors")
    b = load_file(tmp_path / "straight" / "checkpoint" / "adapter.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    assert resumed.record["losses"] == pytest.approx(straight.record["losses"], abs=1e-6)

    record = straight.record
    assert sum(record["examples"].values()) == 6
    split = split_users(task.users, config.split, config.seed)
    assert set(record["query_users"]) <= set(split.train)
    check = record["gguf_check"]
    # the tuned GGUF agrees with the tuned weights about as well as the base GGUF with its own
    # weights (llama.cpp's arithmetic), and far better than with the weights before tuning
    assert check["kl_tuned_gguf_vs_tuned_weights"] < 2 * check["kl_base_gguf_vs_base_weights"] + 0.005
    assert check["kl_tuned_gguf_vs_tuned_weights"] < 0.25 * check["kl_tuned_weights_vs_base_weights"]
    assert record["validation_loss"]["after"] != record["validation_loss"]["before"]
    card = (tmp_path / "straight" / "README.md").read_text()
    assert "Gemma Terms of Use" in card and f"{record['steps']} steps" in card and "1 torch thread" in card
    assert (tmp_path / "straight" / "loss.png").stat().st_size > 0

    # a finished folder is returned as it is; the pipeline's backend takes the folder
    before = straight.model.stat().st_mtime_ns
    assert tune(task, tmp_path / "straight", config).record == record and straight.model.stat().st_mtime_ns == before
    backend = LlamaCppBackend(tmp_path / "straight", n_ctx=1024, max_sequences=4)
    try:
        assert backend.name == "llama.cpp:straight.gguf"
        pool = backend.sample(f"{task.queries[0].input}\nTitle:", SamplingParams(n=4, max_tokens=12, seed=1))
        assert len(pool) == 4 and all(c.n_tokens > 0 for c in pool)
    finally:
        backend.close()


@pytest.mark.slow
def test_a_tune_from_a_model_folder_writes_a_folder_that_transformers_samples(tiny_model, pep_task, tmp_path):
    """Two optimizer steps from a model folder: the merged weights come back as a model folder,
    the adapters changed them, and the transformers backend samples it; a rerun returns it."""
    import torch
    from safetensors.torch import load_file

    from ttp.policy import SamplingParams
    from ttp.policy.transformers_backend import TransformersBackend
    from ttp.tuning import tune

    config = TuneConfig(items_per_user=1, max_examples=4, base_model=str(tiny_model),
                        lora=LoraConfig(accumulation=2, learning_rate=1e-2))
    result = tune(pep_task, tmp_path / "tuned", config)
    assert result.model == tmp_path / "tuned" and result.record["steps"] == 2
    assert result.record["gguf_check"] is None and not list(result.model.glob("*.gguf"))
    assert result.record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    tuned, base = load_file(str(result.model / "model.safetensors")), load_file(str(tiny_model / "model.safetensors"))
    changed = [k for k in base if "q_proj" in k and not (tuned[k] == base[k]).all()]
    assert changed and not any("lora" in k for k in tuned)
    assert "transformers" in (result.model / "README.md").read_text()
    completions = TransformersBackend(result.model).sample("the model", SamplingParams(n=2, max_tokens=3, seed=0))
    assert len(completions) == 2
    assert tune(pep_task, tmp_path / "tuned", config).record == result.record
