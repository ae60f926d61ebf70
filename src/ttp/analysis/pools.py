"""``Pools``: the candidate pools of one (task, policy) as ``(Q, M)`` matrices, built once from
a candidate table (one row per candidate: ``query_id``, ``user``, ``candidate`` and any value
columns such as utilities or ``score:<selector>``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True, eq=False)
class Pools:
    frame: pd.DataFrame          # sorted by query, then candidate index
    query_ids: np.ndarray
    users: np.ndarray
    size: int                    # M, the candidates in every pool

    @classmethod
    def from_frame(cls, candidates: pd.DataFrame) -> "Pools":
        missing = {"query_id", "user", "candidate"} - set(candidates.columns)
        if missing:
            raise KeyError(f"a candidate table needs the columns {sorted(missing)}")
        frame = candidates.sort_values(["query_id", "candidate"], kind="stable").reset_index(drop=True)
        sizes = frame.groupby("query_id", sort=True).size()
        if sizes.empty:
            raise ValueError("the candidate table holds no pools")
        if sizes.nunique() != 1:
            small = sizes.idxmin()
            raise ValueError(f"pools differ in size ({sorted(sizes.unique())}, e.g. query {small} has "
                             f"{sizes[small]}); every query needs M candidates")
        m = int(sizes.iloc[0])
        firsts = frame.iloc[::m]
        return cls(frame, firsts["query_id"].to_numpy(), firsts["user"].to_numpy(), m)

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitem__(self, column: str) -> np.ndarray:
        """The ``(Q, M)`` matrix of one column."""
        if column not in self.frame:
            raise KeyError(f"the candidate table has no column {column!r}; columns: {list(self.frame.columns)}")
        return self.frame[column].to_numpy(dtype=float).reshape(-1, self.size)

    def columns(self, prefix: str) -> list[str]:
        return [c for c in self.frame.columns if c.startswith(prefix)]
