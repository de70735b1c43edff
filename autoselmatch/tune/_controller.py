"""The loop that runs one study: ask the strategy for a point, claim a trial for it, run it.

The controller enqueues the strategy's point (``study.enqueue_trial``) and
claims it with ``study.ask`` while holding the storage lock, then runs the
objective outside the lock and tells the result. So the study looks like
any Optuna study in the dashboard, several workers never pick the same
point, and a rerun resumes: finished points are read back from the study,
trials whose worker died are failed and their points proposed again.

    controller = SearchController(study, spec, LineSearch(grid), param="beta",
                                  objective=lambda beta, trial: train_and_score(beta, trial))
    outcome = controller.run()
    outcome.best_point, outcome.best_value
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import records
from ..runtime import LOG, fault_point
from ..storage import StorageSpec
from ._noise import PointStats, choose
from ._search import SearchStrategy, grid_key
from ._storage import fail_orphaned_trials, storage_lock, worker_id

Objective = Callable[[float, optuna.Trial], float]
"""``objective(point, trial) -> value``: evaluates one grid point; may call
:func:`report` (which raises ``optuna.TrialPruned``) and set trial user attrs."""

BaselineObjective = Callable[[optuna.Trial], float]
"""``objective(trial) -> value``: scores one baseline (may :func:`report` like a grid objective)."""

StopReason = Literal["done", "budget", "timeout"]


def report(trial: optuna.Trial, value: float, step: int) -> None:
    """Report an intermediate value and raise ``optuna.TrialPruned`` if the pruner says so.

    Sync point: callers pass a Python float, so this is where a GPU value is read.
    """
    trial.report(value, step=step)
    fault_point("tune.report")
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4f}")


@dataclass(frozen=True)
class GridStatus:
    """What a study says about the grid points of one search.

    Attributes:
        stats: Settled points (finished, pruned, or failed ``max_failures`` times) and
            their replicates (:class:`~._noise.PointStats`).
        pending: Points of RUNNING or WAITING trials (a settled point may have a replicate pending).
        waiting: Numbers of WAITING trials (enqueued, not yet claimed).
        used: Trials that count against the budget: all but those failed by an
            interruption, a crash or as duplicates.
        taken: Per point, the replicates with a live or settled trial (the next one asked for is the
            smallest replicate not taken).
    """

    stats: dict[float, PointStats]
    pending: set[float]
    waiting: list[int]
    used: int
    taken: dict[float, set[int]] = field(default_factory=dict)

    @property
    def scores(self) -> dict[float, float]:
        """Settled points -> mean over their finished replicates (``-inf``: pruned or failed, no value)."""
        return {point: s.mean for point, s in self.stats.items()}

    @property
    def complete(self) -> dict[float, tuple[float, int]]:
        """Points with a finished replicate -> (mean, trial number of the lowest finished replicate)."""
        return {point: (s.mean, s.trial) for point, s in self.stats.items() if s.values}

    @property
    def best(self) -> tuple[float, float, int] | None:
        """(point, mean, trial number) of the optimum by :func:`~._noise.choose`, or ``None``."""
        point = choose(self.stats)
        if point is None:
            return None
        return point, *self.complete[point]

    def next_replicate(self, point: float) -> int:
        """The smallest replicate of ``point`` without a live or settled trial."""
        taken = self.taken.get(point, set())
        return next(r for r in range(len(taken) + 1) if r not in taken)


def replicate_of(trial: FrozenTrial | optuna.Trial) -> int:
    """Which replicate of its point a trial is (trials of older versions: 0)."""
    return int(trial.user_attrs.get(records.REPLICATE, 0))


def summarize(trials: list[FrozenTrial], param: str, *, max_failures: int = 2,
              line: Mapping[str, float] | None = None) -> GridStatus:
    """Read the trials of a study into a :class:`GridStatus` for parameter ``param``.

    A point's replicate is settled by its first COMPLETE trial (a later one, a TPE repeat, is the
    same value), else by a PRUNED one (no value: a partial value is never a point's value), else
    by ``max_failures`` failures.

    ``line``: the other knobs' values on the searched line, e.g. ``{"beta": 0.4}`` for alpha
    trials at beta 0.4; trials elsewhere are left out (a study may hold several lines: the
    alpha search at stage 1's beta, then the beta refinement at the chosen alpha). A trial's
    knob is its param, else its user attr (:func:`coordinate`); a trial without the knob lies
    on every line (older trials).
    """
    values: dict[float, dict[int, float]] = {}
    networks: dict[float, dict[int, tuple[float, ...]]] = {}
    numbers: dict[float, dict[int, int]] = {}
    pruned: dict[float, set[int]] = {}
    failures: dict[tuple[float, int], int] = {}
    live: dict[float, set[int]] = {}
    waiting: list[int] = []
    used = 0
    for trial in trials:
        point = _point_of(trial, param, line)
        if trial.state == TrialState.WAITING:
            waiting.append(trial.number)
        if point is None:
            continue
        r = replicate_of(trial)
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            live.setdefault(point, set()).add(r)
            used += 1
        elif trial.state == TrialState.COMPLETE:
            used += 1
            if r not in values.setdefault(point, {}):
                values[point][r] = float(trial.value)
                numbers.setdefault(point, {})[r] = trial.number
                accs = _network_accuracies(trial)
                if accs:
                    networks.setdefault(point, {})[r] = accs
        elif trial.state == TrialState.PRUNED:
            used += 1
            pruned.setdefault(point, set()).add(r)
        elif trial.state == TrialState.FAIL and records.ERROR in trial.user_attrs:
            used += 1
            failures[point, r] = failures.get((point, r), 0) + 1
    failed: dict[float, set[int]] = {}
    for (point, r), count in failures.items():
        if count >= max_failures:
            failed.setdefault(point, set()).add(r)
    stats: dict[float, PointStats] = {}
    taken: dict[float, set[int]] = {}
    for point in set(values) | set(pruned) | set(failed) | set(live):
        done = set(values.get(point, {}))
        lost = (pruned.get(point, set()) | failed.get(point, set())) - done
        taken[point] = done | lost | live.get(point, set())
        if done or lost:
            stats[point] = PointStats(values=values.get(point, {}), networks=networks.get(point, {}),
                                      trials=numbers.get(point, {}), tried=frozenset(done | lost),
                                      pruned=bool(pruned.get(point, set()) - done),
                                      failed=bool(failed.get(point, set()) - done))
    return GridStatus(stats, set(live), waiting, used, taken)


def _network_accuracies(trial: FrozenTrial) -> tuple[float, ...]:
    """Each network's accuracy, when the trial recorded them (a beta trial's ``val_accuracy``)."""
    recorded = trial.user_attrs.get(records.VAL_ACCURACY)
    if isinstance(recorded, dict) and isinstance(recorded.get("accuracies"), list):
        return tuple(float(a) for a in recorded["accuracies"])
    return ()


def coordinate(trial: FrozenTrial, knob: str) -> float | None:
    """A grid trial's value of ``knob``: its param (or the param it was enqueued with), else its user
    attr (a knob fixed for the trial's line); ``None`` for a baseline trial or a knob it lacks."""
    if trial.user_attrs.get(records.BASELINE) is not None:
        return None
    if knob in trial.params:
        return grid_key(trial.params[knob])
    fixed = trial.system_attrs.get("fixed_params", {})
    if knob in fixed:
        return grid_key(fixed[knob])
    value = trial.user_attrs.get(knob)
    return grid_key(value) if isinstance(value, (int, float)) else None


def on_line(trial: FrozenTrial, line: Mapping[str, float] | None) -> bool:
    """Whether ``trial`` lies on ``line`` (every knob of it equal, or absent from the trial)."""
    for knob, value in (line or {}).items():
        mine = coordinate(trial, knob)
        if mine is not None and mine != grid_key(value):
            return False
    return True


def _point_of(trial: FrozenTrial, param: str, line: Mapping[str, float] | None = None) -> float | None:
    """``trial``'s grid point of ``param`` when it lies on ``line``, else ``None``."""
    point = coordinate(trial, param)
    return point if point is not None and on_line(trial, line) else None


@dataclass(frozen=True)
class StageOutcome:
    """How a :meth:`SearchController.run` ended.

    Attributes:
        study_name: The study.
        best_point: The optimum by :func:`~._noise.choose` (``None`` if nothing finished).
        best_value: Its mean over its finished replicates (never a pruned trial's partial value).
        best_trial: The trial of its lowest finished replicate.
        ran: Trials this call ran (its own work; other workers' not counted).
        stopped: ``done`` (the strategy has nothing left), ``budget`` or ``timeout``.
        scores: Settled points and their means at the end (``-inf``: pruned or failed).
    """

    study_name: str
    best_point: float | None
    best_value: float | None
    best_trial: int | None
    ran: int
    stopped: StopReason
    scores: dict[float, float] = field(default_factory=dict)


_WAIT = "wait"
_DONE: StopReason = "done"  # the strategy has nothing left
_BUDGET: StopReason = "budget"  # max_trials are used


class SearchController:
    """Runs the search of one study until the strategy is done, the budget is used or time is up.

    Args:
        study: The study (maximised), from :func:`~._storage.open_study`.
        spec: Its storage, for the lock and for failing crashed trials.
        strategy: Which points to evaluate (:data:`~._search.SEARCHES`).
        param: Name of the searched parameter (``beta`` or ``alpha``).
        objective: ``objective(point, trial) -> value``.
        max_trials: Trial budget (``None``: the strategy's default).
        deadline: ``time.monotonic()`` value after which no new trial starts.
        max_failures: Failed runs of one point before it counts as ``-inf``.
        catch: Exceptions that fail a trial but not the study.
        trial_attrs: User attrs set on every trial (settings that shaped it).
        line: The other knobs' values on the searched line, e.g. ``{"beta": 0.4}`` (see
            :func:`summarize`); they are set as user attrs on every trial it enqueues.
        baselines: Baselines to score once each, ``{name: objective(trial)}``, before the grid
            (not counted in ``max_trials``). A baseline trial has the user attr
            ``baseline`` = name and the categorical param ``init`` = ``"random"``, never
            ``param``, so the search never sees it as a grid point.
        poll_seconds: Wait between looks when every useful point is being
            evaluated by another worker, or when the search is over but another
            worker still runs one of its trials or baselines.

    On server databases the storage lock is a no-op; two machines that claim
    the same point at the same moment are caught after the claim: the later
    trial is failed at once (user attr ``duplicate_of``) without running.
    """

    def __init__(self, study: optuna.Study, spec: StorageSpec, strategy: SearchStrategy, *, param: str,
                 objective: Objective, max_trials: int | None = None, deadline: float | None = None,
                 max_failures: int = 2, catch: tuple[type[Exception], ...] = (),
                 trial_attrs: Mapping[str, Any] | None = None, line: Mapping[str, float] | None = None,
                 baselines: Mapping[str, BaselineObjective] | None = None, poll_seconds: float = 2.0) -> None:
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {max_trials}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.study = study
        self.spec = spec
        self.strategy = strategy
        self.param = param
        self.objective = objective
        self.max_trials = strategy.default_trials() if max_trials is None else max_trials
        self.deadline = deadline
        self.max_failures = max_failures
        self.catch = catch
        self.line = dict(line or {})
        self.trial_attrs = {**(trial_attrs or {}), **self.line}
        self.baselines = dict(baselines or {})
        self.poll_seconds = poll_seconds

    def run(self) -> StageOutcome:
        """Run trials until done; return the best point so far and why it stopped.

        It returns ``done`` or ``budget`` only once no trial of the search runs anywhere: a trial
        another worker runs may change the optimum, and one whose worker died is failed by the
        orphan check (heartbeat or process) and its point or baseline run again here.
        """
        ran, told = 0, False
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return self.outcome(ran, "timeout")
            with storage_lock(self.spec):
                fail_orphaned_trials(self.study, self.spec)
                status = self._status()
                due, running = self._baselines()
                if self.max_trials is not None and status.used >= self.max_trials and not status.waiting \
                        and not due:
                    claim = _BUDGET
                else:
                    claim = self._claim(status, due)
                if claim in (_DONE, _BUDGET) and (status.pending or running):
                    # another worker still runs a trial of this stage: wait for it, so that every worker
                    # reads the same outcome, and so that a trial whose worker dies is failed (by the
                    # orphan check above) and retried rather than left RUNNING
                    if not told:
                        LOG.info("%s: nothing left to start here; waiting for the trials other workers run%s",
                                 self.study.study_name, " (and the baseline)" if running else "")
                    claim, told = _WAIT, True
            if claim in (_DONE, _BUDGET):
                return self.outcome(ran, claim)
            if claim == _WAIT:
                time.sleep(self.poll_seconds)
                continue
            trial, point = claim
            if isinstance(point, str):
                self._run_baseline(trial, point)
            else:
                self._run_trial(trial, point, status)
            fault_point("tune.told")
            ran += 1

    # ---- steps -------------------------------------------------------------------------------

    def _status(self) -> GridStatus:
        """The study's trials as the search sees them."""
        return summarize(self.study.get_trials(deepcopy=False), self.param, max_failures=self.max_failures,
                         line=self.line)

    def _baselines(self) -> tuple[list[str], bool]:
        """The baselines still due, and whether one of ours is running or waiting.

        Due: without a settled or live trial (finished, pruned, running, waiting, or failed
        ``max_failures`` times; trials failed by an interruption or as duplicates do not count).
        """
        if not self.baselines:
            return [], False
        settled: dict[str, int] = {}
        running = False
        for trial in self.study.get_trials(deepcopy=False):
            name = trial.user_attrs.get(records.BASELINE)
            if name is None:
                continue
            if trial.state != TrialState.FAIL:
                settled[name] = self.max_failures
                running |= name in self.baselines and trial.state in (TrialState.RUNNING, TrialState.WAITING)
            elif records.ERROR in trial.user_attrs:
                settled[name] = settled.get(name, 0) + 1
        return [name for name in self.baselines if settled.get(name, 0) < self.max_failures], running

    def _claim(self, status: GridStatus, due: list[str]) -> tuple[optuna.Trial, float | str] | str:
        """Under the lock: pick a baseline or a point and turn it into a RUNNING trial of ours."""
        me = worker_id()
        candidates = self.strategy.candidates(status.stats)
        if not status.waiting:
            if due:
                self.study.enqueue_trial({records.INIT: "random"},
                                         user_attrs={**self.trial_attrs, records.BASELINE: due[0], records.WORKER: me,
                                                     records.REPLICATE: 0})
            elif not candidates:
                return _DONE
            elif not self.strategy.samples:
                free = [p for p in candidates if p not in status.pending]
                if not free:
                    return _WAIT
                self.study.enqueue_trial({self.param: free[0]}, user_attrs={
                    **self.trial_attrs, records.WORKER: me, records.REPLICATE: status.next_replicate(free[0])})
        with warnings.catch_warnings():  # the heartbeat is ours (see _heartbeat), not Study.optimize's
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = self.study.ask()  # pops the oldest WAITING trial, if any
        if self.spec.kind == "server":  # at once: a trial without any heartbeat is never failed as stale
            self.study._storage.record_heartbeat(trial._trial_id)
        if not self.strategy.samples and "fixed_params" not in self.study._storage.get_trial_system_attrs(
                trial._trial_id):
            # another worker popped our queued trial first, so ask() made a fresh one whose point the
            # sampler would draw off the grid: give it back unrun (possible only on server databases)
            trial.set_user_attr(records.UNQUEUED, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return _WAIT
        baseline = trial.user_attrs.get(records.BASELINE)
        if trial.user_attrs.get(records.WORKER) != me:
            # not the one we enqueued (a leftover or another worker's): claim it
            for key, value in {**self.trial_attrs, records.BASELINE: baseline, records.WORKER: me}.items():
                trial.set_user_attr(key, value)
        if baseline is not None:
            trial.suggest_categorical(records.INIT, ["random"])
            duplicate = self._duplicate_of(trial.number, baseline=baseline)
            if duplicate is not None or baseline not in self.baselines:
                if duplicate is not None:
                    trial.set_user_attr(records.DUPLICATE_OF, duplicate)
                else:  # queued by a run with baselines on, claimed by one with them off: give it back unrun
                    trial.set_user_attr(records.UNQUEUED, True)
                self.study.tell(trial, state=TrialState.FAIL)
                return _WAIT
            return trial, baseline
        if records.REPLICATE not in trial.user_attrs:  # sampled, not enqueued (tpe): the first replicate
            trial.set_user_attr(records.REPLICATE, 0)
        dist = self.strategy.distribution()
        point = grid_key(trial.suggest_float(self.param, dist.low, dist.high, step=dist.step))
        duplicate = self._duplicate_of(trial.number, point=point, replicate=replicate_of(trial))
        if duplicate is not None:
            trial.set_user_attr(records.DUPLICATE_OF, duplicate)
            self.study.tell(trial, state=TrialState.FAIL)
            return _WAIT
        return trial, point

    def _duplicate_of(self, number: int, *, point: float | None = None, replicate: int = 0,
                      baseline: str | None = None) -> int | None:
        """An earlier live trial of ``replicate`` at ``point``, or of ``baseline`` (possible only on
        server databases, or a TPE repeat)."""
        if self.strategy.samples and baseline is None:
            return None
        live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        for other in self.study.get_trials(deepcopy=False, states=live):
            if other.number >= number:
                continue
            if baseline is not None and other.user_attrs.get(records.BASELINE) == baseline:
                return other.number
            if baseline is None and _point_of(other, self.param, self.line) == point \
                    and replicate_of(other) == replicate:
                return other.number
        return None

    def _run_trial(self, trial: optuna.Trial, point: float, status: GridStatus) -> None:
        r = replicate_of(trial)
        name = f"{self.study.study_name} trial {trial.number} ({self.param}={point:g}{f', replicate {r}' if r else ''})"
        if self.strategy.samples and point in status.complete:  # a TPE repeat: record the earlier value
            value, number = status.complete[point]
            trial.set_user_attr(records.REPEAT_OF, number)
            self.study.tell(trial, value)
            LOG.info("%s: repeat of trial %d, value %.4f", name, number, value)
            return
        self._evaluate(trial, name, lambda: self.objective(point, trial))

    def _run_baseline(self, trial: optuna.Trial, baseline: str) -> None:
        named = records.label(baseline, records.study_method(self.study.user_attrs))
        name = f"{self.study.study_name} trial {trial.number} (baseline {named})"
        self._evaluate(trial, name, lambda: self.baselines[baseline](trial))

    def _evaluate(self, trial: optuna.Trial, name: str, run: Callable[[], float]) -> None:
        """Run one trial's objective and tell the study how it ended."""
        try:  # from here on, an interruption fails the trial (before, the next run's orphan check does)
            fault_point("tune.claimed")
            with _heartbeat(self.study, self.spec, trial):
                value = float(run())
            if not math.isfinite(value):
                raise RuntimeError(f"objective returned {value}")
        except optuna.TrialPruned as exc:
            self.study.tell(trial, state=TrialState.PRUNED)
            LOG.info("%s: %s", name, exc)
            return
        except KeyboardInterrupt:
            trial.set_user_attr(records.INTERRUPTED, True)
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        except self.catch as exc:
            trial.set_user_attr(records.ERROR, f"{type(exc).__name__}: {exc}"[:500])
            self.study.tell(trial, state=TrialState.FAIL)
            LOG.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
            return
        except BaseException:
            trial.set_user_attr(records.INTERRUPTED, True)
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        self.study.tell(trial, value)
        LOG.info("%s: %.4f", name, value)

    def outcome(self, ran: int, stopped: StopReason) -> StageOutcome:
        """The optimum as the study holds it now (after other workers' trials too): the argmax of
        the unimodal fit over the settled points, with its mean value and its lowest finished replicate."""
        status = self._status()
        best = status.best
        point, value, number = best if best is not None else (None, None, None)
        return StageOutcome(self.study.study_name, point, value, number, ran, stopped, dict(status.scores))


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, spec: StorageSpec, trial: optuna.Trial) -> Iterator[None]:
    """On server databases, record a heartbeat for ``trial`` every interval while it runs."""
    if spec.kind != "server":
        yield
        return
    storage = study._storage  # Optuna offers no public handle on a study's storage or a trial's id
    interval = storage.get_heartbeat_interval()  # set by open_storage (tune.heartbeat_interval)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


__all__ = ["BaselineObjective", "GridStatus", "Objective", "SearchController", "StageOutcome", "coordinate", "on_line",
           "replicate_of", "report", "summarize"]
