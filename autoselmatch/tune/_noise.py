"""Noisy grid points: a point's replicates, paired comparisons, and the unimodal fit that picks the optimum.

Every trial of a stage trains its networks from the same seeds (common random
numbers): network ``i`` of replicate ``r`` has seed ``seed + r * networks + i``
at every grid point, so two points' values at the same replicate differ only
by the set. A point is the mean over its finished replicates; two points are
compared by the paired differences of their common replicates (per network
when the trials recorded each network's accuracy). Everything here is a pure
function of the recorded values, so any worker, and any rerun, decides alike.

    a = PointStats(values={0: 0.80, 1: 0.82}, trials={0: 3, 1: 7})
    b = PointStats(values={0: 0.78, 1: 0.79}, trials={0: 4, 1: 8})
    compare(a, b)                               # Comparison(diff=0.025, se=0.005)
    choose({0.2: a, 0.4: b})                    # 0.2: the argmax of the unimodal fit
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Mapping, Sequence

_TIE = 1e-12  # fitted values closer than this are a tie


@dataclass(frozen=True)
class PointStats:
    """What a study holds about one grid point.

    Attributes:
        values: Replicate -> value of its COMPLETE trial (a pruned trial's partial value never enters).
        networks: Replicate -> each network's accuracy in that trial, when the trial recorded them.
        trials: Replicate -> number of its COMPLETE trial.
        tried: Replicates that are settled: finished, pruned, or failed ``max_failures`` times.
        pruned: Some replicate was pruned.
        failed: Some replicate failed ``max_failures`` times.
    """

    values: Mapping[int, float] = field(default_factory=dict)
    networks: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    trials: Mapping[int, int] = field(default_factory=dict)
    tried: frozenset[int] = frozenset()
    pruned: bool = False
    failed: bool = False

    @property
    def n(self) -> int:
        """Finished replicates."""
        return len(self.values)

    @property
    def settled(self) -> bool:
        """The point has a value, or it will get none (pruned, failed)."""
        return bool(self.values) or self.pruned or self.failed

    @property
    def mean(self) -> float:
        """Mean over the finished replicates; ``-inf`` without any (pruned or failed: worst)."""
        return statistics.fmean(self.values.values()) if self.values else -math.inf

    @property
    def trial(self) -> int | None:
        """The COMPLETE trial of the lowest finished replicate (the one a final set continues)."""
        return self.trials[min(self.trials)] if self.trials else None


def as_stats(scores: Mapping[float, float | PointStats]) -> dict[float, PointStats]:
    """``scores`` with plain numbers read as one finished replicate (``-inf``: a failed point)."""
    out = {}
    for point, value in scores.items():
        if isinstance(value, PointStats):
            out[point] = value
        elif math.isfinite(value):
            out[point] = PointStats(values={0: float(value)}, tried=frozenset({0}))
        else:
            out[point] = PointStats(tried=frozenset({0}), failed=True)
    return out


@dataclass(frozen=True)
class Comparison:
    """Point ``a`` against point ``b`` on their common replicates.

    Attributes:
        diff: Mean paired improvement of ``a`` over ``b``.
        se: Its standard error (``None``: fewer than two paired differences, no estimate).
        pairs: Paired differences it rests on.
    """

    diff: float
    se: float | None
    pairs: int

    def within(self, z: float) -> bool:
        """The difference is inside ``z`` standard errors (always, without an estimate)."""
        return self.se is None or abs(self.diff) <= z * self.se


def compare(a: PointStats, b: PointStats) -> Comparison:
    """Paired comparison of two points that both have finished replicates.

    The differences are taken per network where both trials of a replicate
    recorded the same number of networks (their seeds match), else per
    replicate; without common replicates the means are compared, with no error.
    """
    common = sorted(set(a.values) & set(b.values))
    if not common:
        return Comparison(a.mean - b.mean, None, 0)
    diffs: list[float] = []
    for r in common:
        na, nb = a.networks.get(r), b.networks.get(r)
        if na and nb and len(na) == len(nb):
            diffs += [x - y for x, y in zip(na, nb)]
        else:
            diffs.append(a.values[r] - b.values[r])
    diff = statistics.fmean(a.values[r] - b.values[r] for r in common)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) >= 2 else None
    return Comparison(diff, se, len(diffs))


def unimodal_fit(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Weighted least-squares fit that rises, then falls (unimodal isotonic regression).

    Exact: for every split, an increasing fit of the prefix and a decreasing fit
    of the rest (pool-adjacent-violators), keeping the split of least squared
    error; the result rises to its mode and falls after it, whatever the split.
    ``values`` are in grid order; O(k^2) for k points.
    """
    k = len(values)
    best: tuple[float, list[float]] | None = None
    for split in range(k + 1):
        left = _pava(values[:split], weights[:split])
        right = _pava(values[split:][::-1], weights[split:][::-1])[::-1]
        fit = left + right
        sse = sum(w * (y - f) ** 2 for y, w, f in zip(values, weights, fit))
        if best is None or sse < best[0] - _TIE:
            best = (sse, fit)
    return [] if best is None else best[1]


def _pava(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Weighted increasing least-squares fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for y, w in zip(values, weights):
        blocks.append([y, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return [m for m, _, c in blocks for _ in range(int(c))]


def choose(stats: Mapping[float, PointStats]) -> float | None:
    """The optimum: argmax of the unimodal fit over the points with finished replicates.

    Why unimodal isotonic regression rather than a quadratic: the paper only
    says the curves are concave-shaped, and measured alpha curves are often
    lopsided or still rising at the grid's edge, where a parabola's vertex
    lands between or beyond the settled points and drags the choice off the
    best one; the isotonic fit assumes only "rises, then falls", reproduces
    noise-free unimodal data exactly, and pools neighbours whose order the
    noise contradicts. Each point weighs as its number of replicates. Points
    the fit cannot tell apart (a tie at the top) go to the smaller value.
    Pruned and failed points have no finished value and take no part.
    ``None`` when no point has one.
    """
    points = sorted(p for p, s in stats.items() if s.values)
    if not points:
        return None
    fit = unimodal_fit([stats[p].mean for p in points], [float(stats[p].n) for p in points])
    top = max(fit)
    return next(p for p, f in zip(points, fit) if f >= top - _TIE)


__all__ = ["Comparison", "PointStats", "as_stats", "choose", "compare", "unimodal_fit"]
