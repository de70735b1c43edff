"""Search strategies: which grid point a stage evaluates next.

A strategy only decides; it never runs anything. It sees the grid points
that are settled (finished, pruned, or failed too often), each as its
finished replicates (:class:`~._noise.PointStats`; a plain number is one
replicate), and returns the points worth evaluating next, most useful first:
an unsettled point, or a settled one that needs another replicate. The controller
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
from ._noise import PointStats, as_stats, compare

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
        z: A walking search moves to a point only if it beats the best so far by more than
            ``z`` standard errors of the paired difference.
        max_seeds: Replicates a walking search may give one point to settle a comparison
            inside the noise (1: none beyond the first).
        bound: Soft upper bound from the previous IPC's optimum (cross-IPC prior), or ``None``.
            A walking search steps past it only while the curve is still rising there.
    """

    name: ClassVar[str]
    #: True when the Optuna sampler, not :meth:`candidates`, chooses the points.
    samples: ClassVar[bool] = False

    def __init__(self, grid: Sequence[float], *, start: float | None = None, patience: int = 0, seed: int = 0,
                 z: float = 0.0, max_seeds: int = 1, bound: float | None = None) -> None:
        if patience < 0:
            raise InvalidArgument(f"patience must be >= 0, got {patience}")
        if z < 0 or not math.isfinite(z):
            raise InvalidArgument(f"z must be a finite number >= 0, got {z}")
        if max_seeds < 1:
            raise InvalidArgument(f"max_seeds must be >= 1, got {max_seeds}")
        self.grid = check_grid("search", grid)
        self.patience = patience
        self.seed = seed
        self.z = z
        self.max_seeds = max_seeds
        self.bound = None if bound is None else grid_key(bound)
        self.start = self.grid[len(self.grid) // 2] if start is None else nearest(self.grid, start)
        below = [g for g in self.grid if self.bound is None or g <= self.bound]
        if below and self.start not in below:  # a walk starts at or below a prior's bound
            self.start = nearest(below, self.start)

    @abc.abstractmethod
    def candidates(self, scores: Mapping[float, float | PointStats]) -> list[float]:
        """Grid points to evaluate next, most useful first; ``[]`` when the search is over.
        A settled point in the list asks for its next replicate.

        Args:
            scores: Settled grid points (keys from :func:`grid_key`) and their
                replicates, or a plain objective value (higher is better;
                ``-inf`` for a point that kept failing).
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
        return (f"{type(self).__name__}(grid={list(self.grid)}, start={self.start}, patience={self.patience}, "
                f"z={self.z}, max_seeds={self.max_seeds}, bound={self.bound})")


def nearest(grid: Sequence[float], value: float) -> float:
    """The grid point closest to ``value`` (the lower one on a tie)."""
    return min(grid, key=lambda g: (abs(g - value), g))


SEARCHES: Registry[type[SearchStrategy]] = Registry("search strategy")


@SEARCHES.register("line")
class LineSearch(SearchStrategy):
    """Unimodal line search on a grid of noisy values, for objectives that are concave in the parameter.

    SelMatch (Lee & Chung, ICML 2024, Sec. 5.3) observes that accuracy is a
    concave function of both the window start beta and the distillation
    portion alpha. The search evaluates the start point, then both neighbours,
    walks toward the better neighbour one grid step at a time, and stops after
    ``patience + 1`` consecutive points that do not beat the best so far, or
    at the grid's edge. A point beats another only if its paired improvement
    exceeds ``z`` standard errors (:func:`~._noise.compare`); when the
    difference is inside the noise, the one of the two with fewer replicates
    (both, on a tie) gets another, up to ``max_seeds``, before the walk
    decides; a difference still inside the noise then counts as no
    improvement. Without any error estimate and no replicate left, the plain
    difference decides. A plateau counts as no improvement, so a flat top
    ends the walk; ``patience >= 1`` walks across flat stretches. A pruned or
    failed point never beats anything.

    ``bound`` (the previous IPC's optimum) is soft: neighbours above it are not
    evaluated at first, and the walk steps past it only while the point at the
    bound is the best so far and beats its lower neighbour (the curve is still
    rising there by the rule above). Which point is the optimum is decided
    afterwards by :func:`~._noise.choose` over all settled points.

    Args:
        grid: See :class:`SearchStrategy`.
        start: See :class:`SearchStrategy`.
        patience: See :class:`SearchStrategy`.
        seed: See :class:`SearchStrategy`.
        z: See :class:`SearchStrategy`.
        max_seeds: See :class:`SearchStrategy`.
        bound: See :class:`SearchStrategy`.

    Example::

        search = LineSearch((0.0, 0.25, 0.5, 0.75, 1.0), start=0.5)
        f = lambda x: -(x - 0.75) ** 2
        scores = {}
        while points := search.candidates(scores):
            scores[points[0]] = f(points[0])
        assert max(scores, key=scores.get) == 0.75 and len(scores) == 4
    """

    name = "line"

    def candidates(self, scores: Mapping[float, float | PointStats]) -> list[float]:
        stats = as_stats(scores)
        grid, s = self.grid, self.grid.index(self.start)
        near = [j for j in self._neighbour_indices(s) if not self._beyond(grid[j]) or self._beyond(grid[s])]
        missing = [grid[i] for i in [s, *near] if not self._settled(stats, grid[i])]
        if missing:
            return missing
        if not near:
            return self._walk(stats, s, 1)  # a one-point grid, or past the bound if rising at the start
        # the better neighbour; on a tie the right one, or the smaller value under a prior
        j = max(near, key=lambda j: (stats[grid[j]].mean, (j > s) == (self.bound is None)))
        beats = self.beats(stats, grid[j], grid[s])
        if isinstance(beats, list):
            return beats
        if not beats and s + 1 < len(grid) and self._beyond(grid[s + 1]) and not self._beyond(grid[s]):
            past = self._walk(stats, s, 1)  # the start is the best so far: past the bound if rising there
            if past:
                return past
        return self._walk(stats, s, j - s)

    def beats(self, stats: Mapping[float, PointStats], a: float, b: float) -> bool | list[float]:
        """Whether settled point ``a`` beats settled point ``b`` by more than ``z`` standard errors;
        the points that need another replicate first when the difference is inside the noise."""
        sa, sb = stats[a], stats[b]
        if not sa.values or not sb.values:
            return bool(sa.values)
        comparison = compare(sa, sb)
        if not comparison.within(self.z):
            return comparison.diff > 0
        fewest = min(len(sa.tried), len(sb.tried))
        need = [p for p in (a, b) if len(stats[p].tried) == fewest and fewest < self.max_seeds]
        if need:
            return need
        return comparison.se is None and comparison.diff > 0

    def _settled(self, stats: Mapping[float, PointStats], point: float) -> bool:
        return point in stats and stats[point].settled

    def _beyond(self, point: float) -> bool:
        return self.bound is not None and point > self.bound

    def _neighbour_indices(self, i: int) -> list[int]:
        return [j for j in (i + 1, i - 1) if 0 <= j < len(self.grid)]

    def _rising_at(self, stats: Mapping[float, PointStats], i: int) -> bool | list[float]:
        """Whether point ``i`` (at the bound) beats its lower neighbour (``True`` without one)."""
        if i == 0:
            return True
        below = self.grid[i - 1]
        if not self._settled(stats, below):
            return [below]
        return self.beats(stats, self.grid[i], below)

    def _walk(self, stats: Mapping[float, PointStats], s: int, direction: int) -> list[float]:
        """Follow ``direction`` from the start; the next unsettled point (and one look-ahead), the
        points that need replicates, or ``[]``."""
        grid, best, misses, i = self.grid, s, 0, s
        while True:
            i += direction
            if not 0 <= i < len(grid):
                return []
            point = grid[i]
            if self._beyond(point) and not self._beyond(grid[i - 1]):
                if best != i - 1:
                    return []
                rising = self._rising_at(stats, i - 1)
                if rising is not True:
                    return rising if isinstance(rising, list) else []
            if not self._settled(stats, point):
                ahead = i + direction
                look = 0 <= ahead < len(grid) and not (self._beyond(grid[ahead]) and not self._beyond(point))
                return [point] + ([grid[ahead]] if look else [])
            beats = self.beats(stats, point, grid[best])
            if isinstance(beats, list):
                return beats
            if beats:
                best, misses = i, 0
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
        z, max_seeds, bound: Unused (one value per point; the pipeline cuts the grid at a prior's bound).
    """

    name = "grid"

    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        stats = as_stats(scores)
        return [point for point in self.grid if point not in stats or not stats[point].settled]


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
        kwargs: ``z``, ``max_seeds``, ``bound``: unused (TPE never walks).
    """

    name = "tpe"
    samples = True

    def __init__(self, grid: Sequence[float], *, start: float | None = None, patience: int = 0, seed: int = 0,
                 **kwargs: float | int | None) -> None:
        super().__init__(grid, start=start, patience=patience, seed=seed, **kwargs)
        if len(self.grid) < 2:
            raise InvalidArgument(f"tpe search needs at least two grid points, got {list(self.grid)}")
        step = self.grid[1] - self.grid[0]
        for a, b in zip(self.grid, self.grid[1:]):
            if abs((b - a) - step) > 1e-6:
                raise InvalidArgument(f"tpe search needs an evenly spaced grid, got {list(self.grid)}")
        self.step = grid_key(step)

    def candidates(self, scores: Mapping[float, float]) -> list[float]:
        stats = as_stats(scores)
        return [point for point in self.grid if point not in stats or not stats[point].settled]

    def default_trials(self) -> int | None:
        return (len(self.grid) + 1) // 2

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(3, len(self.grid)))

    def distribution(self) -> optuna.distributions.FloatDistribution:
        return optuna.distributions.FloatDistribution(self.grid[0], self.grid[-1], step=self.step)


__all__ = ["SEARCHES", "GridSearch", "LineSearch", "SearchStrategy", "TPESearch", "check_grid", "grid_key", "nearest"]
