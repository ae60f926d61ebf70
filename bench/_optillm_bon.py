"""optillm's ``bon`` approach, called as its proxy calls it, run by ``bench/vs_peers.py`` in
``.venv-optillm`` (optillm 0.4.0 installed without its dependencies).

optillm's package ``__init__`` imports its proxy server, and the server imports every approach
and about 35 packages (torch, spacy, gradio, selenium, z3, cerebras, ...).  ``bon`` itself needs
only an ``openai`` client, so this script loads ``optillm/bon.py`` and its conversation logger
from the installed package without that ``__init__``, and calls ``best_of_n_sampling`` with
the arguments the proxy's ``execute_single_approach`` passes: no system prompt, the user's
message as ``"User: <text>"``, ``n``, and the request's ``max_tokens``.

llama-cpp-python's server ignores ``n`` (it answers one choice).  The client here asks it
``n`` times and returns the answers as one response of ``n`` choices, as a server that honours
``n`` (vLLM, llama.cpp's own) would, so that ``bon`` takes its main path.  (Its fallback for a
provider that refuses ``n`` drops every candidate cut at ``max_tokens``, and a base model asked
through a chat template rarely ends its turn within a title's 24 tokens: that path returned no
candidate for 30 of 32 requests here.)  Reads a JSON job on stdin, writes one JSON line per
request."""
import importlib.util
import json
import sys
import time
import types

import openai


def load_bon():
    root = importlib.util.find_spec("optillm").submodule_search_locations[0]
    package = types.ModuleType("optillm")
    package.__path__ = [root]
    sys.modules["optillm"] = package
    from optillm import bon

    return bon.best_of_n_sampling


class NChoices:
    """An ``openai`` client whose chat completions give ``n`` choices from ``n`` requests."""

    def __init__(self, client: openai.OpenAI):
        self.calls = 0
        outer = self

        class Completions:
            def create(self, **request):
                n = request.pop("n", 1) or 1
                answers = [client.chat.completions.create(**request) for _ in range(n)]
                outer.calls += n
                merged = answers[0].model_copy(deep=True)
                merged.choices = [c.model_copy(update={"index": i}) for i, a in enumerate(answers) for c in a.choices]
                merged.usage.completion_tokens = sum(a.usage.completion_tokens for a in answers)
                return merged

        self.chat = types.SimpleNamespace(completions=Completions())


def main():
    job = json.load(sys.stdin)
    best_of_n = load_bon()
    client = NChoices(openai.OpenAI(base_url=job["url"], api_key="unused", max_retries=0, timeout=600))
    for request in job["requests"]:
        calls, start = client.calls, time.perf_counter()
        try:
            text, tokens = best_of_n(job["system_prompt"], f"User: {request['text']}", client, job["model"],
                                     request["n"], {"max_tokens": job["max_tokens"]})
            error = None if not text.startswith("Error:") else text
        except Exception as err:  # noqa: BLE001 - an arm's failure is counted, not fatal
            text, tokens, error = "", 0, f"{type(err).__name__}: {err}"
        print(json.dumps({"id": request["id"], "n": request["n"], "text": text, "completion_tokens": tokens,
                          "model_calls": client.calls - calls, "latency": time.perf_counter() - start,
                          "error": error}), flush=True)


if __name__ == "__main__":
    main()
