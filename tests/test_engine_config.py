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
    assert backends_that_can(HIDDEN_STATES) == ["llama-cpp"]
    assert backends_that_can(SCORE) == ["llama-cpp", "openai"]

    class Sampler(PolicyBackend):
        name = "sampler"

    with pytest.raises(MissingCapability, match="the judge needs a backend that can score a given text.*"
                                                "the sampler backend cannot"):
        Sampler().require(SCORE, "the judge")
