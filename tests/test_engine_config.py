"""An engine's settings name the policy without building it: a rerun whose states are all cached
must not load the model just to write its name into a reward model's note."""
import pytest

from ttp.policy.llama_cpp import default_model_path
from ttp.policy.registry import EngineConfig


def test_every_backend_is_named_without_being_built(tmp_path):
    assert EngineConfig().label == f"llama.cpp:{default_model_path().name}"
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "model-q8_0.gguf").write_bytes(b"")
    assert EngineConfig(model_path=str(tmp_path / "tuned")).label == "llama.cpp:model-q8_0.gguf"
    assert EngineConfig(backend="vllm", model_path="/models/gemma-3-270m").label == "vllm:gemma-3-270m"
    assert EngineConfig(backend="transformers", model_path="/m/gemma.gguf").label == "transformers:gemma.gguf"
    assert EngineConfig(backend="openai", server_url="http://gpu:8000", server_model="llama").label == "openai:llama"


def test_backends_declare_their_capabilities_and_a_missing_one_is_named():
    from ttp.policy import CAPABILITIES, HIDDEN_STATES, SCORE, MissingCapability, PolicyBackend
    from ttp.policy.registry import BACKENDS, backend_class, backends_that_can

    for name in BACKENDS:
        engine = backend_class(name)
        assert engine.capabilities <= set(CAPABILITIES)
        for capability in engine.capabilities:                   # a declared capability is a method it has
            assert getattr(engine, capability) is not getattr(PolicyBackend, capability, None)
    assert backends_that_can(HIDDEN_STATES) == ["llama-cpp", "transformers"]
    assert backends_that_can(SCORE) == ["llama-cpp", "openai", "transformers"]

    class Sampler(PolicyBackend):
        name = "sampler"

    with pytest.raises(MissingCapability, match="the judge needs a backend that can score a given text.*"
                                                "the sampler backend cannot"):
        Sampler().require(SCORE, "the judge")


def test_a_new_engine_setting_is_one_field_seen_in_the_help_and_handed_to_its_engine():
    import typer
    from pydantic import Field
    from typer.testing import CliRunner

    from ttp.cli import app
    from ttp.options import model_options
    from ttp.policy.registry import _passed

    shown = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).output
    assert "(one of: auto, bfloat16, float16, float32)" in shown        # a Literal's choices are shown
    for name in EngineConfig.model_fields:                         # every field is an option of `ttp run`
        assert "--" + {"model_path": "model"}.get(name, name).replace("_", "-") in shown

    class WithEagerMode(EngineConfig):
        enforce_eager: bool = Field(False, description="vllm: no CUDA graphs",
                                    json_schema_extra=_passed(vllm="enforce_eager"))

    seen = {}
    command = typer.Typer()

    @command.command()
    @model_options(WithEagerMode, "engine")
    def run(engine: WithEagerMode, out: str = typer.Option("x", help="where")):
        seen["engine"], seen["out"] = engine, out

    runner = CliRunner()
    assert "vllm: no CUDA graphs" in runner.invoke(command, ["--help"], env={"COLUMNS": "300"}).output
    result = runner.invoke(command, ["--backend", "vllm", "--model", "/m", "--enforce-eager", "--max-num-seqs", "32"])
    assert result.exit_code == 0, result.output
    assert seen["engine"].engine_args() == {"max_model_len": 8192, "dtype": "auto", "tensor_parallel_size": 1,
                                            "max_num_seqs": 32, "enforce_eager": True}
    assert seen["engine"].model_copy(update={"backend": "transformers"}).engine_args() == {"dtype": "auto"}
    refused = runner.invoke(command, ["--gpu-memory-utilization", "1.5"], env={"COLUMNS": "300"})
    assert refused.exit_code == 2 and "--gpu-memory-utilization: Input should be less than or equal to 1" in \
        refused.output


def test_a_config_saved_before_the_gpu_settings_loads_with_their_defaults(tmp_path):
    import json

    from ttp.runs.config import RunConfig

    saved = {"tasks": [{"path": str(tmp_path)}], "engine": {"backend": "llama-cpp", "model_path": None, "n_ctx": 4096,
                                                            "server_url": None, "server_model": None,
                                                            "request_timeout": 300.0, "server_concurrency": 8,
                                                            "ray_workers": 0, "ray_address": None}}
    config = RunConfig.from_json(saved)
    assert config.engine.n_ctx == 4096 and config.engine.tensor_parallel_size == 1 and config.engine.dtype == "auto"
    assert RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
