"""An engine's settings name the policy without building it: a rerun whose states are all cached
must not load the model just to write its name into a reward model's note."""
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
