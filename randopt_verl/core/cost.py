"""Cost on one axis for every method (RandOpt, ES, GRPO): rollouts, their generated tokens, and wall time.

What counts (docs/ARCHITECTURE.md, "Cost"): prompt x sample generated for the search or for training, the tokens of
those rollouts, and the wall time of the search or training work, weights-in included (loading candidates, the
update, the sync of updated weights); validation, test answers, controls, checkpoint I/O and start-up are left out.
The trainers add to a `Cost` as they work; a resumed run rebuilds it from what it wrote (`of_rows` from ledger rows,
each carrying its share; `from_metrics` from a metrics.jsonl row).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence


@dataclass
class Cost:
    """Cumulative counters; `metrics()` names them `cost/*` for tracking and metrics.jsonl."""

    rollouts: int = 0
    tokens: int = 0
    wall_s: float = 0.0

    def add(self, rollouts: int, tokens: int, wall_s: float) -> None:
        self.rollouts += int(rollouts)
        self.tokens += int(tokens)
        self.wall_s += float(wall_s)

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Adds the wall time of the block (work that generates nothing, e.g. the ES update and its sync)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall_s += time.perf_counter() - t0

    def as_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "tokens": self.tokens, "wall_s": round(self.wall_s, 3)}

    def metrics(self) -> dict[str, float]:
        return {f"cost/{k}": v for k, v in self.as_dict().items()}

    @classmethod
    def from_metrics(cls, data: Mapping[str, Any]) -> "Cost":
        return cls(int(data["cost/rollouts"]), int(data["cost/tokens"]), float(data["cost/wall_s"]))

    @classmethod
    def of_rows(cls, rows: Sequence[Mapping[str, Any]]) -> "Cost":
        """The cost of ledger rows (each row carries its n, tokens and share of the wall time)."""
        cost = cls()
        for r in rows:
            cost.add(r["n"], r["tokens"], r["wall_s"])
        return cost
