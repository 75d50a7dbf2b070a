"""ScaleNet joint search (spec 2.6): base GA alternating with per-stage grid search of scaling strategies.

Model-agnostic: ``score_fn(encoding) -> float`` is the proxy accuracy (higher is better) and ``flops_fn`` the FLOPs
counter (default :func:`official_flops`). The GA is our own single-objective GA (binary tournament, 2-point
crossover, integer polynomial mutation eta 3 with probability 1/n_var, duplicate elimination, elitist survival),
not pymoo 0.3.0 NSGA-Net: one objective, no crowding distance, our own RNG stream. It minimises the official
family-score objective ``-family_score`` (infeasible bases are penalised by :func:`family_score` itself).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from tenfold.nas.scalenet import (
    ScaleNetSpace,
    check_basenet,
    family_score,
    is_feasible,
    official_flops,
    scale_basenet,
    scaling_values,
)

FlopsFn = Callable[[ScaleNetSpace, Sequence[Any]], int]


def _key(x: Sequence[Any]) -> str:
    return json.dumps([float(v) if isinstance(v, float) else int(v) for v in x])


class EvalCache:
    """Evaluation cache keyed by the encoding string; JSON-serialisable."""

    def __init__(
        self,
        fn: Callable[[list[Any]], float],
        table: dict[str, float] | None = None,
        batch_fn: Callable[[list[list[Any]]], list[float]] | None = None,
    ) -> None:
        self.fn, self.table, self.calls, self.batch_fn = fn, dict(table or {}), 0, batch_fn

    def fill(self, encodings: Sequence[Sequence[Any]]) -> None:
        """Score the not yet cached ``encodings`` in one ``batch_fn`` call (e.g. spread over processes)."""
        todo: dict[str, list[Any]] = {}
        for e in encodings:
            if _key(e) not in self.table:
                todo.setdefault(_key(e), list(e))
        if not todo:
            return
        if self.batch_fn is None:
            scores = [float(self.fn(e)) for e in todo.values()]
        else:
            scores = [float(v) for v in self.batch_fn(list(todo.values()))]
        self.calls += len(todo)
        self.table.update(zip(todo, scores, strict=True))

    def __call__(self, encoding: Sequence[Any]) -> float:
        """Score of ``encoding``, computed once."""
        k = _key(encoding)
        if k not in self.table:
            self.calls += 1
            self.table[k] = float(self.fn(list(encoding)))
        return self.table[k]


def get_init_basenet(
    space: ScaleNetSpace, rng: random.Random, n: int, flops_fn: FlopsFn = official_flops, max_tries: int = 100000
) -> list[list[int]]:
    """Rejection-sample ``n`` distinct feasible (repaired) base encodings."""
    out: list[list[int]] = []
    for _ in range(max_tries):
        if len(out) == n:
            return out
        b = check_basenet(space, [rng.randint(0, c - 1) for c in space.block_choices()])
        if b not in out and is_feasible(space, b, None, 0, space.err_base, flops_fn):
            out.append(b)
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} feasible bases found in {max_tries} tries (check flops_constraint)")
    return out


def grid_points(space: ScaleNetSpace, s: int) -> list[tuple[int, int, int]]:
    """Every (depth, width, resolution) index triple of scaling stage ``s`` (the per-stage grid of the search)."""
    return list(
        itertools.product(
            range(len(space.depth_multipliers[s])),
            range(len(space.width_multipliers[s])),
            range(len(space.resolutions[s])),
        )
    )


def grid_search(
    space: ScaleNetSpace,
    basenet: Sequence[int],
    stage: int,
    score_fn: Callable[[list[Any]], float],
    flops_fn: FlopsFn = official_flops,
) -> list[tuple[float, tuple[int, int, int]]]:
    """Exhaustive grid of one scaling stage for one base (official ``grid_search_scaling``), best first.

    The triples whose scaled network is feasible under ``err_scale`` (relative to the base's own FLOPs) are scored
    by ``score_fn`` and sorted by descending score, ties in grid order (depth, then width, then resolution index).
    As official (``eval_subnet`` with ``err = err_scale``), if the base itself is off F0 by more than ``err_scale``
    every triple gets the base penalty ``3 + (F0 - F(b)) / F0`` instead of a proxy score, so the ranking is the grid
    order (checked against the official code in ``tests/nas/test_scalenet_official.py``).
    """
    f0 = space.flops_constraint
    f_base = flops_fn(space, [*basenet, 1.0, space.resolutions[0][0]])
    penalty = None if abs(f0 - f_base) <= space.err_scale else 3.0 + (f0 - f_base) / f0
    rows = []
    for idx in grid_points(space, stage):
        scaled = scale_basenet(space, basenet, *scaling_values(space, stage, idx))
        if is_feasible(space, basenet, scaled, stage, space.err_scale, flops_fn):
            rows.append((float(score_fn(scaled)) if penalty is None else penalty, idx))
    return sorted(rows, key=lambda r: -r[0])


def initial_strategy(
    space: ScaleNetSpace, bases: Sequence[Sequence[int]], flops_fn: FlopsFn = official_flops
) -> dict[int, tuple[int, int, int]]:
    """Per stage the grid point feasible for the most bases (feasibility averaged over the bases)."""
    out = {}
    for s in range(1, space.max_scaling_stage + 1):

        def frac(idx: tuple[int, int, int], s: int = s) -> float:
            return sum(
                is_feasible(
                    space, b, scale_basenet(space, b, *scaling_values(space, s, idx)), s, space.err_scale, flops_fn
                )
                for b in bases
            ) / len(bases)

        out[s] = max(grid_points(space, s), key=frac)
    return out


def _poly_int(x: int, lo: int, hi: int, rng: random.Random, eta: float = 3.0) -> int:
    if hi <= lo:
        return lo
    u = rng.random()
    d = (2 * u) ** (1 / (eta + 1)) - 1 if u < 0.5 else 1 - (2 * (1 - u)) ** (1 / (eta + 1))
    return min(hi, max(lo, int(round(x + d * (hi - lo + 1)))))


class SearchStopped(Exception):
    """Raised by a callback to stop the search (the state file allows ``resume``)."""


def search(
    space: ScaleNetSpace,
    score_fn: Callable[[list[Any]], float],
    state_path: str | os.PathLike,
    *,
    flops_fn: FlopsFn = official_flops,
    pop_size: int = 8,
    n_gens: int = 4,
    admm_iter: int = 2,
    n_init: int = 4,
    topk: int = 3,
    seed: int = 0,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    batch_score_fn: Callable[[list[list[Any]]], list[float]] | None = None,
    write_state: bool = True,
) -> dict[str, Any]:
    """Alternation loop: grid strategy for the top bases, then a GA over bases; state saved after every generation.

    Args:
        space: the space (``flops_constraint`` set).
        score_fn: proxy accuracy of a scaled encoding (higher is better).
        state_path: JSON state file, rewritten atomically after every generation.
        flops_fn: FLOPs counter.
        pop_size: GA population (paper 64).
        n_gens: GA generations per round (paper 40).
        admm_iter: alternation rounds (paper 8).
        n_init: random feasible bases of the initial strategy and population (paper 20).
        topk: best bases kept in the state.
        seed: seed of the search's RNG.
        resume: continue from ``state_path``.
        callback: called with the state after every generation (raise :class:`SearchStopped` to stop).
        batch_score_fn: optional batched ``score_fn``: the candidates a population, a generation's offspring or a
            grid needs are collected first and scored in one call (e.g.
            :func:`~tenfold.nas.scalenet.evaluate_candidates`, which spreads them over processes).
        write_state: write the state file (False on all but one process when every process runs the search).

    Returns the final state (``topk``: best ``[score, base]`` rows, ``strategy``, ``cache``, ``evaluations``).
    """
    if resume:
        try:
            with open(state_path) as f:
                st = json.load(f)
            rng = random.Random()
            v = st["rng"]
            rng.setstate((v[0], tuple(v[1]), v[2]))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"cannot resume from state file {state_path}: {e!r}") from e
    else:
        rng = random.Random(seed)
        bases = get_init_basenet(space, rng, n_init, flops_fn)
        st = {
            "round": 0,
            "gen": 0,
            "pop": None,
            "cache": {},
            "topk": [],
            "bases": bases,
            "strategy": {str(k): list(v) for k, v in initial_strategy(space, bases, flops_fn).items()},
        }
    acc = EvalCache(score_fn, st["cache"], batch_fn=batch_score_fn)
    n_var = space.num_blocks
    choices = space.block_choices()

    def fit(b: list[int]) -> float:
        strat = {int(k): tuple(v) for k, v in st["strategy"].items()}
        return family_score(space, b, strat, acc)

    def needed(bases: Sequence[list[int]]) -> None:
        """Score at once every encoding the family scores of ``bases`` will ask for."""
        wanted: list[list[Any]] = []
        strat = {int(k): tuple(v) for k, v in st["strategy"].items()}
        for b in bases:
            family_score(space, b, strat, lambda e: wanted.append(e) or 0.0)
        acc.fill(wanted)

    def save() -> None:
        st["cache"] = acc.table
        st["evaluations"] = len(acc.table)
        if not write_state:
            return
        st["rng"] = [list(rng.getstate()[0:1])[0], list(rng.getstate()[1]), rng.getstate()[2]]
        tmp = f"{state_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, state_path)

    while st["round"] < admm_iter:
        if st["pop"] is None:
            if st["round"] > 0:  # grid step for the best base
                best = st["topk"][0][1]
                for s in range(1, space.max_scaling_stage + 1):
                    grid_wanted: list[list[Any]] = []
                    grid_search(space, best, s, lambda e, w=grid_wanted: w.append(e) or 0.0, flops_fn)
                    acc.fill(grid_wanted)
                    rows = grid_search(space, best, s, acc, flops_fn)
                    if rows:
                        st["strategy"][str(s)] = list(rows[0][1])
            pop = [list(b) for b in st["bases"]]
            while len(pop) < pop_size:
                b = check_basenet(space, [rng.randint(0, c - 1) for c in choices])
                if b not in pop:
                    pop.append(b)
            needed(pop)
            st["pop"] = [[fit(b), b] for b in pop]
            st["gen"] = 0
        while st["gen"] < n_gens:
            pop = st["pop"]
            seen = {_key(b) for _, b in pop}
            kids: list[list[int]] = []
            for _ in range(50 * pop_size):
                if len(kids) >= pop_size:
                    break
                p = [max(rng.sample(pop, 2), key=lambda r: r[0])[1] for _ in range(2)]
                i, j = sorted(rng.sample(range(n_var + 1), 2))
                c = p[0][:i] + p[1][i:j] + p[0][j:]
                c = [
                    _poly_int(v, 0, n - 1, rng) if rng.random() < 1 / n_var else v
                    for v, n in zip(c, choices, strict=True)
                ]
                c = check_basenet(space, c)
                if _key(c) not in seen:
                    seen.add(_key(c))
                    kids.append(c)
            needed(kids)
            merged = pop + [[fit(c), c] for c in kids]
            st["pop"] = sorted(merged, key=lambda r: -r[0])[:pop_size]
            st["gen"] += 1
            st["topk"] = [list(r) for r in st["pop"][:topk]]
            save()
            if callback is not None:
                callback(st)
        st["bases"] = [r[1] for r in st["topk"]]
        st["pop"] = None
        st["round"] += 1
        save()
    return st
