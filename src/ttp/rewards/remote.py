"""A reward model served elsewhere: any endpoint that answers ``POST /v1/ttp/score`` as
``ttp serve`` does, used as a selector.

    {"user": "...", "input": "...", "candidates": [{"text": "...", "logprob": -3.2, "n_tokens": 7}, ...]}
    -> {"data": [{"index": 0, "score": 0.41, "mean": 0.41, "sd": 0.08}, ...], ...}

``ttp scores RUN --from-url URL`` scores a run's held-out pools with it, so it is judged,
diagnosed and given a stopping rule like any reward model; ``ttp serve --reward-url URL``
then picks with it online.  An answer that is not that shape raises ``RemoteScoreError``
naming the URL and the field."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import numpy as np

from ttp.files import write_bytes_atomic

SCORE_PATH = "/v1/ttp/score"


class RemoteScoreError(RuntimeError):
    """The scoring endpoint failed or answered something else than scores."""


class RemoteScorer:
    """``RemoteScorer(url)(user, input, texts, logprobs, n_tokens)`` -> ``(score, mean, sd)``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a reward URL starts with http:// or https://, got {url!r}")
        self.url = url.rstrip("/").removesuffix("/v1") + SCORE_PATH
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self.client.close()

    def __call__(self, user: str, text: str, texts, logprobs, n_tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # log-probabilities for every candidate or none; without them the endpoint teacher-forces the texts
        sampled = all(math.isfinite(lp) for lp in logprobs)
        candidates = [{"text": t, **({"logprob": float(lp), "n_tokens": int(n)} if sampled else {})}
                      for t, lp, n in zip(texts, logprobs, n_tokens)]
        try:
            answer = self.client.post(self.url, json={"user": user, "input": text, "candidates": candidates})
        except httpx.HTTPError as err:
            raise RemoteScoreError(f"{self.url}: {type(err).__name__}: {err}") from None
        if answer.status_code != 200:
            try:
                said = answer.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                said = answer.text[:200]
            raise RemoteScoreError(f"{self.url}: HTTP {answer.status_code}: {said}")
        return self._read(answer, len(candidates))

    def _read(self, answer: httpx.Response, expected: int):
        try:
            data = answer.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise RemoteScoreError(f"{self.url}: the answer has no 'data' list of scores") from None
        if not isinstance(data, list) or len(data) != expected:
            raise RemoteScoreError(f"{self.url}: 'data' must list {expected} scores, one per candidate")
        columns = {"score": [], "mean": [], "sd": []}
        for i, row in enumerate(sorted(data, key=lambda r: r.get("index", 0) if isinstance(r, dict) else 0)):
            if not isinstance(row, dict) or row.get("index") != i:
                raise RemoteScoreError(f"{self.url}: data[{i}]: field 'index' must be {i}")
            for field, values in columns.items():
                value = row.get(field, row.get("score") if field == "mean" else None)
                if field != "sd" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                    raise RemoteScoreError(f"{self.url}: data[{i}]: field {field!r}: {value!r} is not a finite number")
                values.append(np.nan if value is None else float(value))
        return tuple(np.asarray(values, dtype=float) for values in columns.values())


def append_checkpoint(out, query_id: str, candidates: list[int], score, sd) -> dict:
    """Append one pool's scores to an open checkpoint (on disk before returning); returns its rows."""
    rows = {"query_id": [query_id] * len(candidates), "candidate": [int(c) for c in candidates],
            "score": [float(v) for v in score], "sd": [None if np.isnan(v) else float(v) for v in sd]}
    out.write(json.dumps(rows) + "\n")
    out.flush()
    os.fsync(out.fileno())
    return rows


def read_checkpoint(path: Path) -> dict[str, dict]:
    """The pools a checkpoint holds.  A line cut short by a kill is dropped, and the file
    rewritten without it, so that the next append starts a line of its own."""
    pools, kept, lines = {}, [], path.read_bytes().splitlines() if path.exists() else []
    for line in lines:
        try:
            rows = json.loads(line)
            pools[rows["query_id"][0]] = rows
            kept.append(line + b"\n")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            continue
    if len(kept) < len(lines) or (lines and not path.read_bytes().endswith(b"\n")):
        write_bytes_atomic(path, b"".join(kept))
    return pools
