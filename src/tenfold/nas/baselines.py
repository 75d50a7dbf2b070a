"""Baselines in the GINAS harness: random search, regularised evolution, local search, on the same budget.

All three count a budget in *distinct* evaluated architectures (a proposal that was already evaluated is redrawn,
as GINAS answers repeats from its history instead of spending budget), select the best by the optimiser's score
(validation accuracy on NAS-Bench-201), and return a :class:`~tenfold.nas.result.SearchResult`.

* Random search: uniform draws.
* Regularised evolution (Real et al., "Regularized Evolution for Image Classifier Architecture Search",
  arXiv:1802.01548): a population of ``population`` random architectures; then, until the budget is spent, a
  tournament of ``sample`` members drawn uniformly from the population, the best of which is mutated (one
  position changed to another value), the child is evaluated and joins the population, and the *oldest* member
  dies. With the paper-style budget of 10 we use population 5 and tournament 3 (NAS-Bench-201's defaults are 10
  and 3 for budgets in the hundreds; a population of 10 would leave no evolution at all).
* Local search (White et al., "Local Search is State of the Art for NAS Benchmarks", arXiv:2005.02960), the
  first-improvement variant: start from a random architecture, evaluate its one-change neighbours in random
  order, move to the first that is better, and restart from a new random architecture when none is.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from tenfold.nas.result import SearchRecord, SearchResult
from tenfold.nas.spaces import Answer, SearchSpace

__all__ = ["BASELINES", "local_search", "random_search", "regularized_evolution"]


class _SearchLog:
    """The log of one baseline search: every distinct architecture evaluated, its score, and the budget left.

    An architecture is scored once; asking for it again returns the logged score and spends no budget.
    """

    def __init__(
        self, space: SearchSpace, budget: int, name: str, seed: int, stop: Callable[[], bool] | None = None
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1 evaluation, got {budget}")
        self.space = space
        self.stop = stop
        self.result = SearchResult(name, space.name, budget, seed)
        self.scores: dict[str, float] = {}

    @property
    def left(self) -> int:
        """Evaluations left in the budget (0 once ``stop`` says so, after the first evaluation)."""
        if self.stop is not None and self.result.records and self.stop():
            self.result.stats["stopped_early"] = True
            return 0
        return self.result.budget - len(self.result.records)

    def seen(self, answer: Answer) -> bool:
        """Whether ``answer`` is in the log."""
        return self.space.key(answer) in self.scores

    def evaluate(self, answer: Answer) -> float:
        """The optimiser's score of ``answer``: logged (a new record) on its first evaluation, then reused."""
        key = self.space.key(answer)
        if key not in self.scores:
            evaluation = self.space.evaluate(answer)
            self.result.records.append(SearchRecord.of(self.space, answer, evaluation))
            self.scores[key] = evaluation.acc
        return self.scores[key]

    def fresh_random(self, rng: random.Random, tries: int = 1000) -> Answer:
        """A random architecture not evaluated yet (spaces are far larger than budgets)."""
        for _ in range(tries):
            answer = self.space.random_answer(rng)
            if not self.seen(answer):
                return answer
        raise ValueError(f"no unseen architecture found in {tries} draws from {self.space.name}")


def random_search(
    space: SearchSpace, budget: int = 10, seed: int = 0, stop: Callable[[], bool] | None = None
) -> SearchResult:
    """Evaluate ``budget`` distinct uniformly random architectures.

    Args:
        space: the search space.
        budget: evaluations.
        seed: the trial's seed.
        stop: checked before each evaluation after the first; True ends the search early (a time limit).
    """
    rng = random.Random(seed)
    log = _SearchLog(space, budget, "random", seed, stop)
    while log.left:
        log.evaluate(log.fresh_random(rng))
    return log.result


def regularized_evolution(
    space: SearchSpace,
    budget: int = 10,
    seed: int = 0,
    population: int = 5,
    sample: int = 3,
    stop: Callable[[], bool] | None = None,
) -> SearchResult:
    """Regularised (aging) evolution with tournament selection and one-position mutation.

    Args:
        space: the search space.
        budget: evaluations (the initial population included).
        seed: the trial's seed.
        population: population size (the first ``population`` evaluations are random).
        sample: tournament size.
        stop: checked before each evaluation after the first; True ends the search early (a time limit).

    Raises:
        ValueError: ``sample`` outside 1..``population``.
    """
    if not 1 <= sample <= population:
        raise ValueError(f"sample must be in 1..population ({population}), got {sample}")
    rng = random.Random(seed)
    log = _SearchLog(space, budget, "evolution", seed, stop)
    alive: deque[tuple[Answer, float]] = deque()
    while log.left and len(alive) < population:
        answer = log.fresh_random(rng)
        alive.append((answer, log.evaluate(answer)))
    while log.left:
        contenders = rng.sample(list(alive), sample)
        parent = max(contenders, key=lambda m: m[1])[0]
        child = parent
        for _ in range(100):  # a child that was already evaluated would spend no budget: mutate again
            child = space.mutate(parent, rng)
            if not log.seen(child):
                break
        else:
            child = log.fresh_random(rng)
        alive.append((child, log.evaluate(child)))
        alive.popleft()  # the oldest dies, whatever its score (the "regularised" part)
    return log.result


def local_search(
    space: SearchSpace, budget: int = 10, seed: int = 0, stop: Callable[[], bool] | None = None
) -> SearchResult:
    """First-improvement local search over one-position changes, restarting at a random point at a local optimum.

    Args:
        space: the search space.
        budget: evaluations.
        seed: the trial's seed.
        stop: checked before each evaluation after the first; True ends the search early (a time limit).
    """
    rng = random.Random(seed)
    log = _SearchLog(space, budget, "local", seed, stop)
    current = log.fresh_random(rng)
    score = log.evaluate(current)
    while log.left:
        neighbours = space.neighbours(current)
        rng.shuffle(neighbours)
        moved = False
        for neighbour in neighbours:
            if not log.left:
                break
            if log.seen(neighbour):
                continue
            value = log.evaluate(neighbour)
            if value > score:
                current, score, moved = neighbour, value, True
                break
        if not moved and log.left:  # a local optimum (or every neighbour already seen): restart
            current = log.fresh_random(rng)
            score = log.evaluate(current)
    return log.result


#: The baselines by their ``tenfold search --optimizer`` names: ``fn(space, budget, seed) -> SearchResult``.
BASELINES: dict[str, Callable[..., SearchResult]] = {
    "random": random_search,
    "evolution": regularized_evolution,
    "local": local_search,
}
