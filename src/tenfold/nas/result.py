"""What every optimiser returns: the evaluated architectures in order, the best one, the best-so-far curves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenfold.nas.spaces import Evaluation, SearchSpace

__all__ = ["SearchRecord", "SearchResult", "summarize", "write_json"]


@dataclass
class SearchRecord:
    """One evaluated architecture: the answer, its key, and its :class:`~tenfold.nas.spaces.Evaluation` fields."""

    answer: list[int]
    key: str
    acc: float
    report_acc: float
    rank: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, space: SearchSpace, answer: Sequence[int], evaluation: Evaluation) -> SearchRecord:
        """The record of ``answer`` scored as ``evaluation`` in ``space``."""
        return cls(list(answer), space.key(answer), evaluation.acc, evaluation.report_acc, evaluation.rank,
                   dict(evaluation.info))  # fmt: skip


@dataclass
class SearchResult:
    """The outcome of one search trial.

    Attributes:
        optimizer: ``ginas``, ``random``, ``evolution``, ``local``.
        space: the space's name.
        budget: evaluations allowed.
        seed: the trial's seed (None for GINAS, whose randomness is the chat model's).
        records: evaluated architectures in evaluation order.
        stats: optimiser counters (chat calls, corrections, repeats...).
    """

    optimizer: str
    space: str
    budget: int
    seed: int | None
    records: list[SearchRecord] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def best_index(self, upto: int | None = None) -> int:
        """Index of the record with the highest ``acc`` (the optimiser's score) among the first ``upto``.

        Ties go to the earliest. On NAS-Bench-201 this is the validation-selected architecture.

        Raises:
            ValueError: no record.
        """
        records = self.records[:upto] if upto is not None else self.records
        if not records:
            raise ValueError(f"{self.optimizer} on {self.space}: no architecture was evaluated")
        return max(range(len(records)), key=lambda i: (records[i].acc, -i))

    def best(self) -> SearchRecord:
        """The selected architecture (highest ``acc``)."""
        return self.records[self.best_index()]

    def curve(self) -> list[dict[str, Any]]:
        """Best so far after each evaluation: ``{"iteration", "acc", "report_acc", "rank"}`` of the selection."""
        out = []
        for t in range(1, len(self.records) + 1):
            r = self.records[self.best_index(t)]
            out.append({"iteration": t, "acc": r.acc, "report_acc": r.report_acc, "rank": r.rank})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the best record and the curve."""
        return {
            "optimizer": self.optimizer,
            "space": self.space,
            "budget": self.budget,
            "seed": self.seed,
            "evaluations": len(self.records),
            "best": asdict(self.best()) if self.records else None,
            "curve": self.curve(),
            "records": [asdict(r) for r in self.records],
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        """Inverse of :meth:`to_dict`."""
        records = [SearchRecord(**r) for r in data["records"]]
        return cls(data["optimizer"], data["space"], data["budget"], data["seed"], records, data.get("stats", {}))


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    # sample standard deviation (n - 1), as a spread over trials; 0 for one trial
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(results: list[SearchResult]) -> dict[str, Any]:
    """Mean and std over trials of the selected architecture's reported accuracy and rank, the paper's table row.

    A trial that evaluated nothing (a chat model that never gave a valid answer) has no selected architecture: it
    is left out of the statistics and counted in ``failed_trials``, so one failed trial does not hide the others.

    Returns:
        ``{"optimizer", "space", "trials", "failed_trials", "budget", "acc_mean", "acc_std", "best_acc",
        "rank_mean", "rank_std", "rank_median", "best_rank"}``: ``trials`` counts every trial, the statistics are
        over the ``trials - failed_trials`` that evaluated at least one architecture (accuracies in percent; the
        rank entries are absent without ranks, the accuracy entries are None when every trial failed).

    Raises:
        ValueError: ``results`` is empty.
    """
    if not results:
        raise ValueError("no trial to summarise")
    done = [r for r in results if r.records]
    row: dict[str, Any] = {
        "optimizer": results[0].optimizer,
        "space": results[0].space,
        "trials": len(results),
        "failed_trials": len(results) - len(done),
        "budget": results[0].budget,
    }
    if not done:
        row.update(acc_mean=None, acc_std=None, best_acc=None)
        return row
    best = [r.best() for r in done]
    accs = [b.report_acc for b in best]
    mean, std = _mean_std(accs)
    row.update(acc_mean=mean, acc_std=std, best_acc=max(accs))
    ranks = [b.rank for b in best]
    if all(r is not None for r in ranks):
        r_mean, r_std = _mean_std([float(r) for r in ranks])
        ordered = sorted(ranks)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        row.update(rank_mean=r_mean, rank_std=r_std, rank_median=median, best_rank=min(ranks))
    return row


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (write a temporary file, then rename)."""
    from tenfold.utils.checkpoint import atomic_write

    with atomic_write(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
