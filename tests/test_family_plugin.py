"""A reward-model family defined in this file alone, made known by ``register_family``: `ttp
compare` trains and judges it, and `ttp serve` picks with it, with no other file of ttp naming it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pytest
from typer.testing import CliRunner

from ttp.cli import app
from ttp.local_servers import free_port, wait_until_up
from ttp.rewards.families import FAMILIES, Family, register_family

pytestmark = pytest.mark.slow
TASK = "PEP-titles"
SELECTOR = "toy_length.probabilistic/mean"


class LengthFamily(Family):
    """Reads two numbers per candidate: its length in words and in characters."""

    name = "toy_length"

    @staticmethod
    def _read(candidates: pd.DataFrame) -> pd.DataFrame:
        text = candidates["text"].astype(str)
        return pd.DataFrame({"words": text.str.split().str.len().astype(float), "chars": text.str.len().astype(float)},
                            index=candidates.index)

    def batch_inputs(self, table, inputs):
        return self._read(table), {"family": self.name, "reads": "words, chars"}

    def query_inputs(self, query, candidates, inputs):
        return self._read(candidates)


def register() -> None:
    register_family(LengthFamily())


@pytest.fixture()
def toy_family():
    """Known while the test runs, so that no other module's `ttp compare` meets it."""
    register()
    yield FAMILIES["toy_length"]
    FAMILIES.pop("toy_length")


def test_a_family_of_one_test_file_is_trained_compared_and_served(toy_family, small_run, tmp_path):
    result = CliRunner().invoke(app, ["compare", str(small_run), "--family", "toy_length"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "toy_length" in result.output and "families compared" in result.output
    evaluation = json.loads((small_run / TASK / "personalized" / "reward_eval.json").read_text())["selectors"]
    assert {"toy_length.pointwise", "toy_length.bradley_terry", SELECTOR} <= set(evaluation)
    model_dir = small_run / TASK / "personalized" / "reward_models" / "toy_length.probabilistic"
    model = toy_family.load(model_dir)
    assert model.feature_names_in_ == ["words", "chars"] and model.inputs_["reads"] == "words, chars"

    # `ttp serve` in a process of its own that knows the family only by importing this file
    port = free_port()
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_family_plugin; "
            f"test_family_plugin.register(); from ttp.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(small_run), "--task-name", TASK, "--db",
                             str(tmp_path / "profiles.sqlite"), "--port", str(port), "--selector", SELECTOR],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", proc, timeout_s=120)
        user = json.loads((small_run / TASK / "split.json").read_text())["test"][0]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.completions.create(model="ttp", user=user, max_tokens=10, extra_body={"ttp": {"budget": 4}},
                                      prompt="Generate a title for the following abstract of a paper: "
                                             "A new syntax for structural pattern matching.")
        meta = r.model_extra["ttp"]
        assert meta["personalized"] and meta["selector"] == SELECTOR
        # the server's scores are this family's model on what this family reads
        expected = model.predict(LengthFamily._read(pd.DataFrame({"text": meta["candidates"]})))
        np.testing.assert_allclose(meta["scores"], expected, rtol=1e-5, atol=1e-6)
        assert r.choices[0].text == meta["candidates"][int(np.argmax(meta["scores"]))]
    finally:
        proc.kill()
        proc.wait()
