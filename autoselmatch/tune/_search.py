"""Search strategies: which grid point a stage evaluates next.

A strategy only decides; it never runs anything. It sees the scores of the
grid points that are settled (finished, pruned, or failed too often) and
returns the points worth evaluating next, most useful first. The controller
(:mod:`._controller`) enqueues the first one that nobody is evaluating yet, so
several workers can share a study, and a rerun resumes from whatever the study
already holds: the decision is a pure function of the recorded trials.

    search = SEARCHES.get("line")(grid=(0.1, 0.2, 0.3, 0.4, 0.5), start=0.3)
    search.candidates({0.3: 0.61})               # [0.4, 0.2]: the neighbours
    search.candidates({0.2: 0.58, 0.3: 0.61, 0.4: 0.64})   # [0.5]: walk right
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Mapping, Sequence

import optuna

from ..errors import InvalidArgument
from ..registry import Registry

_DIGITS = 6  # grid points are compared after rounding to this many decimals


def grid_key(value: float) -> float:
    """The canonical form of a grid value (floats from storage round-trip with noise)."""
    return round(float(value), _DIGITS)


def check_grid(name: str, grid: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated ``grid``; an empty grid or a non-finite value is an error."""
    if len(grid) == 0:
        raise InvalidArgument(f"the {name} grid is empty")
    for value in grid:
        if not math.isfinite(float(value)):
            raise InvalidArgument(f"the {name} grid must hold finite numbers, got {value!r}")
    return tuple(sorted({grid_key(v) for v in grid}))


class SearchStrategy(abc.ABC):
    """Base of the search strategies over a 1-D grid.

    Args:
        grid: Candidate values of the searched parameter (any order; sorted here).
        start: Where a walking search starts; the nearest grid point is used.
            ``None``: the middle of the grid.
        patience: Evaluations without improvement a walking search tolerates
            before it stops (0: stop after the first drop).
        seed: Seed of the strategy's sampler.
    """

    name: ClassVar[str]
    #: True when the Optuna sampler, not :meth:`candidates`, chooses the points.
    samples: ClassVar[bool] = False

    def __init__(self, grid: Sequence[float], *, start: float | None = None, patience: int = 0, seed: int = 0) -> None:
        if patience < 0:
            raise InvalidArgument(f"patience must be >= 0, got {patience}")
        self.grid = check_grid("search", grid)
        self.patience = patience
        self.seed = seed
        self.start = self.grid[len(self.grid) // 2] if start is None else nearest(self.grid, start)

    @abc.abstractmethod
    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        """Grid points to evaluate next, most useful first; ``[]`` when the search is over.

        Args:
            scores: Settled grid points (keys from :func:`grid_key`) and their
                objective values (higher is better; ``-inf`` for a point that
                kept failing).
        """

    def default_trials(self) -> int | None:
        """Trial budget when the user gives none (``None``: until :meth:`candidates` is empty)."""
        return None

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The study's sampler. Walking and grid searches enqueue fixed points, so it never samples."""
        return optuna.samplers.RandomSampler(seed=self.seed)

    def distribution(self) -> optuna.distributions.FloatDistribution:
        """How the parameter is declared to Optuna: a float range, so that studies
        whose grid later narrows (cross-IPC prior) stay compatible and the
        dashboard plots the parameter on a numeric axis."""
        return optuna.distributions.FloatDistribution(self.grid[0], self.grid[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={list(self.grid)}, start={self.start}, patience={self.patience})"


def nearest(grid: Sequence[float], value: float) -> float:
    """The grid point closest to ``value`` (the lower one on a tie)."""
    return min(grid, key=lambda g: (abs(g - value), g))


SEARCHES: Registry[type[SearchStrategy]] = Registry("search strategy")


@SEARCHES.register("line")
class LineSearch(SearchStrategy):
    """Unimodal line search on a grid, for objectives that are concave in the parameter.

    SelMatch (Lee & Chung, ICML 2024, Sec. 5.3) observes that accuracy is a
    concave function of both the window start beta and the distillation
    portion alpha. The search evaluates the start point, then both neighbours,
    walks toward the better neighbour one grid step at a time, and stops after
    ``patience + 1`` consecutive points that do not beat the best so far, or
    at the grid's edge. A plateau (equal values) counts as no improvement, so a
    flat top ends the walk; ``patience >= 1`` walks across flat stretches and
    noise. Points the walk looked ahead to speculatively (for a second worker)
    are scored too and may become the best.

    Args:
        grid: See :class:`SearchStrategy`.
        start: See :class:`SearchStrategy`.
        patience: See :class:`SearchStrategy`.
        seed: See :class:`SearchStrategy`.

    Example::

        search = LineSearch((0.0, 0.25, 0.5, 0.75, 1.0), start=0.5)
        f = lambda x: -(x - 0.75) ** 2
        scores = {}
        while points := search.candidates(scores):
            scores[points[0]] = f(points[0])
        assert max(scores, key=scores.get) == 0.75 and len(scores) == 4
    """

    name = "line"

    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        grid, s = self.grid, self.grid.index(self.start)
        if self.start not in scores:
            return [self.start, *self._neighbours(s)]
        missing = [grid[i] for i in self._neighbour_indices(s) if grid[i] not in scores]
        if missing:
            return missing
        direction = self._direction(scores, s)
        if direction == 0:
            return []
        return self._walk(scores, s, direction)

    def _neighbour_indices(self, i: int) -> list[int]:
        return [j for j in (i + 1, i - 1) if 0 <= j < len(self.grid)]

    def _neighbours(self, i: int) -> list[float]:
        return [self.grid[j] for j in self._neighbour_indices(i)]

    def _direction(self, scores: Mapping[float, float], s: int) -> int:
        """+1 or -1 toward the better neighbour (right on a tie); 0 for a single-point grid."""
        sides = {d: scores[self.grid[s + d]] for d in (1, -1) if 0 <= s + d < len(self.grid)}
        if not sides:
            return 0
        return max(sides, key=lambda d: (sides[d], d))

    def _walk(self, scores: Mapping[float, float], s: int, direction: int) -> list[float]:
        """Follow ``direction`` from the start; the next unscored point (and one look-ahead) or ``[]``."""
        best, misses, i = scores[self.grid[s]], 0, s
        while True:
            i += direction
            if not 0 <= i < len(self.grid):
                return []
            point = self.grid[i]
            if point not in scores:
                ahead = i + direction
                return [point] + ([self.grid[ahead]] if 0 <= ahead < len(self.grid) else [])
            if scores[point] > best:
                best, misses = scores[point], 0
            else:
                misses += 1
                if misses > self.patience:
                    return []


@SEARCHES.register("grid")
class GridSearch(SearchStrategy):
    """Every grid point once, in grid order: the baseline the line search is measured against.

    Args:
        grid: See :class:`SearchStrategy`.
        start: Unused (a full sweep has no start); accepted for a uniform signature.
        patience: Unused.
        seed: See :class:`SearchStrategy`.
    """

    name = "grid"

    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        return [point for point in self.grid if point not in scores]


@SEARCHES.register("tpe")
class TPESearch(SearchStrategy):
    """Optuna's TPE sampler (seeded) picks grid points for a trial budget.

    The grid must be evenly spaced: it is declared as a float range with that
    step. TPE may pick a point twice; the controller then records the earlier
    value without recomputing it.

    Args:
        grid: See :class:`SearchStrategy` (evenly spaced, at least two points).
        start: Unused.
        patience: Unused.
        seed: Seed of the TPE sampler.
    """

    name = "tpe"
    samples = True

    def __init__(self, grid: Sequence[float], *, start: float | None = None, patience: int = 0, seed: int = 0) -> None:
        super().__init__(grid, start=start, patience=patience, seed=seed)
        if len(self.grid) < 2:
            raise InvalidArgument(f"tpe search needs at least two grid points, got {list(self.grid)}")
        step = self.grid[1] - self.grid[0]
        for a, b in zip(self.grid, self.grid[1:]):
            if abs((b - a) - step) > 1e-6:
                raise InvalidArgument(f"tpe search needs an evenly spaced grid, got {list(self.grid)}")
        self.step = grid_key(step)

    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        return [point for point in self.grid if point not in scores]

    def default_trials(self) -> int | None:
        return (len(self.grid) + 1) // 2

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(3, len(self.grid)))

    def distribution(self) -> optuna.distributions.FloatDistribution:
        return optuna.distributions.FloatDistribution(self.grid[0], self.grid[-1], step=self.step)


__all__ = ["SEARCHES", "GridSearch", "LineSearch", "SearchStrategy", "TPESearch", "check_grid", "grid_key", "nearest"]
