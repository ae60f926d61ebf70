"""The command line as a whole: every option of every command has help, an option name means one
thing in every command (old spellings still read, with a warning), list options take comma lists,
and --debug is in the help."""
import pytest
import typer.main
from typer.testing import CliRunner

from ttp.cli import app, main


def _commands(command, path=()):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_option_of_every_command_has_help():
    missing = [f"ttp {name} {param.opts[0]}" for name, command in _commands(typer.main.get_command(app))
               for param in command.params if not getattr(param, "help", None) and not getattr(param, "hidden", False)]
    assert missing == []
    assert "--debug" in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output


def test_an_option_name_means_one_thing_in_every_command():
    """--task is a task folder and --model a model path wherever they appear; a task's name is
    --task-name, the prompting --prompting, matrix's base/tuned --policy-models."""
    meanings = {}
    for name, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            for opt in param.opts:
                meanings.setdefault(opt, set()).add(param.name)
    assert meanings["--task"] == {"task"} and meanings["--model"] == {"option__model_path"}
    assert "--policy" not in meanings and meanings["--prompting"] == {"prompting"}
    assert meanings["--task-name"] == {"task_name"}


@pytest.mark.parametrize("args, old, new", [
    (["generate", "RUN", "--task", "t"], "--task", "--task-name"),
    (["scores", "RUN", "--task=t", "--policy", "plain", "--name", "x", "--from-url", "http://127.0.0.1:9"],
     "--policy", "--prompting"),
    (["serve", "RUN", "--task", "t"], "--task", "--task-name"),
])
def test_an_old_spelling_still_works_and_says_its_new_name(tmp_path, capsys, args, old, new):
    args = [str(tmp_path / "nowhere") if a == "RUN" else a for a in args]
    with pytest.warns(UserWarning, match=f"is spelled {new} now; {old} goes in the next release"):
        assert main(args) == 1                          # it got as far as the run folder
    assert "is not a run folder" in capsys.readouterr().err


def test_lists_take_commas_and_repeats_alike(tmp_path, capsys):
    from ttp.cli import _listed

    assert _listed(["a,b", " c ", "d,,"]) == ["a", "b", "c", "d"] and _listed(None) == []
    assert main(["run", "--task", str(tmp_path), "--out", str(tmp_path / "r"), "--stages", "sample,dance"]) == 2
    assert "unknown stages ['dance']" in capsys.readouterr().err
    assert main(["run", "--task", str(tmp_path), "--out", str(tmp_path / "r"), "--family", "features,vibes"]) == 2
    assert "vibes" in capsys.readouterr().err
    assert main(["learning-curve", str(tmp_path), "--items", "0,two"]) == 2
    assert "--items takes whole numbers" in capsys.readouterr().err


def test_tune_takes_its_task_as_an_option_and_the_old_positional_with_a_warning(tmp_path, capsys):
    with pytest.warns(UserWarning, match="is spelled `ttp tune --task"):
        assert main(["tune", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 1
    assert "questions.json: file not found" in capsys.readouterr().err
    assert main(["tune", "--out", str(tmp_path / "m")]) == 2
    assert "give the task folder: --task PATH" in capsys.readouterr().err


def test_run_without_a_task_goes_on_with_the_saved_run_and_refuses_to_change_it(tmp_path):
    """`ttp run --out RUN` alone resumes RUN; an option that would change its configuration is
    refused by name rather than ignored, and a folder with no run stops with one line."""
    wide = {"COLUMNS": "300"}
    changed = CliRunner().invoke(app, ["run", "--out", str(tmp_path), "--pool-size", "8"], env=wide)
    assert changed.exit_code != 0 and "--pool-size" in changed.output and "saved configuration" in changed.output
    engine = CliRunner().invoke(app, ["run", "--out", str(tmp_path), "--backend", "transformers"], env=wide)
    assert engine.exit_code != 0 and "--backend" in engine.output
    assert main(["run", "--out", str(tmp_path)]) == 1           # no run there: one line says so


def test_an_rm_model_that_is_not_there_is_refused_before_anything_runs(tmp_path):
    for command in (["run", "--task", str(tmp_path), "--out", str(tmp_path / "run"), "--family", "lm"],
                    ["compare", str(tmp_path), "--family", "lm"]):
        result = CliRunner().invoke(app, [*command, "--rm-model", str(tmp_path / "nowhere")], env={"COLUMNS": "300"})
        assert result.exit_code != 0 and "--rm-model" in result.output and "no such folder" in result.output
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, model, left_out", [
    ("run", "ttp.policy:SamplingParams", ("seed", "stop")),         # the run's --seed seeds its draws too
    ("serve", "ttp.serve.config:ServeConfig", ()),
    ("tune", "ttp.tuning:TuneConfig", ("base_model", "lora")),      # --base-model is a path; lora is its own
    ("tune", "ttp.tuning.lora:LoraConfig", ()),
])
def test_a_typed_config_s_fields_are_its_command_s_options_with_their_help(command, model, left_out):
    """Each field is declared once: its option, default and help come from the field."""
    from importlib import import_module

    from ttp.options import option_names

    module, name = model.split(":")
    fields = getattr(import_module(module), name).model_fields
    params = {p.opts[0]: p for p in typer.main.get_command(app).commands[command].params}
    for field_name, field in fields.items():
        if field_name in left_out:
            continue
        option = params[option_names(field_name, field)[0]]
        assert option.help.startswith(field.description) and option.default == field.default


@pytest.mark.parametrize("args, said", [
    (["tune", "--task", "T", "--out", "O", "--rank", "0"], "--rank: Input should be greater than or equal to 1"),
    (["tune", "--task", "T", "--out", "O", "--split", "0.5", "0.5", "0.5"], "--split: must be three positive shares"),
    (["serve", "RUN", "--task-name", "t", "--concurrency", "65"], "--concurrency: Input should be less than or equal"),
    (["serve", "RUN", "--task-name", "t", "--budget", "0"], "--budget: Input should be greater than or equal to 1"),
    (["run", "--task", "T", "--top-p", "0"], "--top-p: Input should be greater than 0"),
])
def test_a_value_its_config_refuses_stops_with_the_option_s_name(capsys, args, said):
    assert main(args) == 2
    assert said in capsys.readouterr().err


def test_lora_s_scale_follows_its_rank_unless_given():
    from ttp.tuning.lora import LoraConfig

    assert LoraConfig(rank=4).alpha == 8.0 and LoraConfig(rank=4, alpha=3).alpha == 3.0
    assert LoraConfig().model_dump() == LoraConfig.model_validate(LoraConfig().model_dump()).model_dump()
