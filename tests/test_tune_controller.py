"""The search controller on real Optuna storages with synthetic objectives."""

import math
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from autoselmatch.errors import TrainingDiverged
from autoselmatch.storage import open_storage, parse_storage
from autoselmatch.tune import GridSearch, LineSearch, SearchController, TPESearch, report
from autoselmatch.tune._controller import summarize
from autoselmatch.tune._storage import fail_orphaned_trials, worker_id

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(tmp_path, url=None, pruner=None, sampler=None, name="s"):
    spec = parse_storage(url or f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(storage=open_storage(spec), study_name=name, direction="maximize",
                                pruner=pruner or optuna.pruners.NopPruner(), sampler=sampler, load_if_exists=True)
    return spec, study


def concave(peak):
    return lambda x, trial: 1.0 - (x - peak) ** 2


def points(study, states=(TrialState.COMPLETE,)):
    return [t.params["beta"] for t in study.get_trials(states=states) if "beta" in t.params]


def test_line_search_runs_as_enqueued_trials_and_finds_the_peak(tmp_path):
    spec, study = make_study(tmp_path)
    outcome = SearchController(study, spec, LineSearch(GRID, start=0.5), param="beta",
                               objective=concave(0.72), trial_attrs={"ipc": 10}).run()
    assert outcome.stopped == "done"
    assert outcome.best_point == 0.7 and outcome.best_trial == study.best_trial.number
    assert points(study) == [0.5, 0.6, 0.4, 0.7, 0.8]
    trial = study.trials[0]
    assert trial.system_attrs["fixed_params"] == {"beta": 0.5}  # enqueued, as in the dashboard
    assert trial.user_attrs["ipc"] == 10 and trial.user_attrs["worker"] == worker_id()
    assert isinstance(trial.distributions["beta"], optuna.distributions.FloatDistribution)


def test_grid_search_evaluates_every_point_and_a_rerun_adds_nothing(tmp_path):
    spec, study = make_study(tmp_path)
    calls = []

    def objective(x, trial):
        calls.append(x)
        return x

    SearchController(study, spec, GridSearch(GRID), param="beta", objective=objective).run()
    again = SearchController(study, spec, GridSearch(GRID), param="beta", objective=objective).run()
    assert sorted(calls) == list(GRID)
    assert again.ran == 0 and again.best_point == 0.9


def test_a_pruned_trial_is_recorded_pruned_with_its_last_intermediate_value(tmp_path):
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    spec, study = make_study(tmp_path, pruner=pruner)

    def objective(x, trial):
        for step in (10, 20, 30):
            report(trial, x * step / 30, step)
        return x

    SearchController(study, spec, GridSearch((0.9, 0.2)), param="beta", objective=objective).run()
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and first.params["beta"] == 0.2
    assert second.state == TrialState.COMPLETE
    spec, study = make_study(tmp_path, pruner=pruner, name="t")
    SearchController(study, spec, GridSearch((0.2, 0.9)), param="beta",
                     objective=lambda x, t: objective(1.1 - x, t)).run()
    pruned = study.trials[1]
    assert pruned.state == TrialState.PRUNED
    assert pruned.value == pytest.approx(pruned.intermediate_values[max(pruned.intermediate_values)])
    assert pruned.value == pytest.approx(0.2 * 10 / 30)


def test_pruned_points_count_as_their_last_value_in_the_walk(tmp_path):
    spec, study = make_study(tmp_path, pruner=optuna.pruners.MedianPruner(n_startup_trials=1))

    def objective(x, trial):
        report(trial, 1.0 - abs(x - 0.5), 1)
        return 1.0 - abs(x - 0.5)

    outcome = SearchController(study, spec, LineSearch(GRID, start=0.5), param="beta", objective=objective).run()
    assert outcome.best_point == 0.5
    assert {t.state for t in study.trials[1:]} == {TrialState.PRUNED}
    assert len(study.trials) == 3


def test_a_failing_point_is_retried_then_treated_as_worst_and_the_study_goes_on(tmp_path):
    spec, study = make_study(tmp_path)

    def objective(x, trial):
        if x == 0.6:
            raise TrainingDiverged("loss is nan")
        return 1.0 - abs(x - 0.6)

    outcome = SearchController(study, spec, LineSearch(GRID, start=0.5), param="beta", objective=objective,
                               catch=(TrainingDiverged,), max_failures=2).run()
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.params["beta"] for t in failed] == [0.6, 0.6]
    assert "TrainingDiverged: loss is nan" in failed[0].user_attrs["error"]
    assert outcome.best_point == 0.5 and outcome.stopped == "done"


def test_an_uncaught_error_fails_the_trial_and_stops(tmp_path):
    spec, study = make_study(tmp_path)

    def objective(x, trial):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        SearchController(study, spec, GridSearch(GRID), param="beta", objective=objective).run()
    assert study.trials[0].state == TrialState.FAIL
    assert "error" not in study.trials[0].user_attrs  # not counted as a failure of the point


def test_ctrl_c_fails_the_running_trial_and_a_rerun_retries_it(tmp_path):
    spec, study = make_study(tmp_path)

    def interrupted(x, trial):
        if x == 0.2:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        SearchController(study, spec, GridSearch(GRID), param="beta", objective=interrupted).run()
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].user_attrs["interrupted"]
    SearchController(study, spec, GridSearch(GRID), param="beta", objective=lambda x, t: x).run()
    assert sorted(points(study)) == list(GRID)


def test_trial_budget_and_timeout(tmp_path):
    spec, study = make_study(tmp_path)
    outcome = SearchController(study, spec, GridSearch(GRID), param="beta", objective=lambda x, t: x,
                               max_trials=3).run()
    assert outcome.stopped == "budget" and len(study.trials) == 3
    spec, study = make_study(tmp_path, name="timed")
    outcome = SearchController(study, spec, GridSearch(GRID), param="beta", objective=lambda x, t: x,
                               deadline=0.0).run()
    assert outcome.stopped == "timeout" and outcome.best_point is None and len(study.trials) == 0


def test_tpe_samples_grid_points_and_reuses_repeated_ones(tmp_path):
    search = TPESearch(GRID, seed=0)
    spec, study = make_study(tmp_path, sampler=search.sampler())
    calls = []

    def objective(x, trial):
        calls.append(x)
        return -abs(x - 0.3)

    SearchController(study, spec, search, param="beta", objective=objective, max_trials=8).run()
    values = [round(t.params["beta"], 6) for t in study.trials]
    assert len(values) == 8 and set(values) <= set(GRID)
    assert len(calls) == len(set(values))  # a repeated point is not recomputed
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert len(repeats) == 8 - len(set(values))


def test_orphaned_running_trial_of_a_dead_process_is_failed_and_its_point_retried(tmp_path):
    spec, study = make_study(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study.enqueue_trial({"beta": 0.5})
    trial = study.ask()
    trial.suggest_float("beta", 0.1, 0.9)
    trial.set_user_attr("worker", {"host": worker_id()["host"], "pid": int(dead.stdout)})
    alive = study.ask()
    alive.suggest_float("beta", 0.1, 0.9)
    alive.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    assert fail_orphaned_trials(study, spec) == [trial.number]
    assert study.trials[alive.number].state == TrialState.RUNNING  # other hosts are left alone
    status = summarize(study.get_trials(), "beta")
    assert 0.5 not in status.scores and 0.5 not in status.pending


def test_summary_counts_budget_and_marks_settled_points():
    def frozen(state, x, value=None, **attrs):
        return optuna.trial.create_trial(state=state, value=value, params={"beta": x},
                                         distributions={"beta": optuna.distributions.FloatDistribution(0, 1)},
                                         user_attrs=attrs)

    trials = [
        frozen(TrialState.COMPLETE, 0.5, 0.7),
        frozen(TrialState.PRUNED, 0.6),
        frozen(TrialState.FAIL, 0.4, error="x"),
        frozen(TrialState.FAIL, 0.4, error="x"),
        frozen(TrialState.FAIL, 0.3, interrupted=True),
    ]
    status = summarize(trials, "beta", max_failures=2)
    assert status.scores[0.5] == 0.7
    assert status.scores[0.6] == -math.inf and status.scores[0.4] == -math.inf
    assert 0.3 not in status.scores
    assert status.used == 4 and status.best[:2] == (0.5, 0.7)


def test_invalid_controller_arguments():
    with pytest.raises(ValueError, match="max_trials must be >= 1"):
        SearchController(None, None, GridSearch(GRID), param="beta", objective=lambda x, t: x, max_trials=0)
    with pytest.raises(ValueError, match="max_failures must be >= 1"):
        SearchController(None, None, GridSearch(GRID), param="beta", objective=lambda x, t: x, max_failures=0)


def test_a_baseline_runs_first_once_outside_the_budget_and_is_never_a_grid_point(tmp_path):
    spec, study = make_study(tmp_path)
    calls = []

    def baseline(trial):
        calls.append("baseline")
        report(trial, 2.0, 1)
        return 5.0  # above every grid value: the search must not see it

    for _ in range(2):  # a rerun neither repeats it nor adds grid trials
        outcome = SearchController(study, spec, LineSearch(GRID, start=0.5), param="beta", objective=concave(0.72),
                                   max_trials=5, trial_attrs={"baseline": None}, baselines={"mtt": baseline}).run()
    assert calls == ["baseline"]
    first = study.trials[0]
    assert first.user_attrs["baseline"] == "mtt" and first.params == {"init": "random"} and first.value == 5.0
    assert points(study) == [0.5, 0.6, 0.4, 0.7, 0.8]  # the full budget of 5 grid trials besides it
    assert outcome.best_point == 0.7 and outcome.scores == summarize(study.trials[1:], "beta").scores
    assert all(t.user_attrs["baseline"] is None for t in study.trials[1:])


def test_a_failing_baseline_is_retried_up_to_max_failures_then_left(tmp_path):
    spec, study = make_study(tmp_path)

    def broken(trial):
        raise TrainingDiverged("loss is nan")

    outcome = SearchController(study, spec, GridSearch((0.1, 0.2)), param="beta", objective=lambda x, t: x,
                               catch=(TrainingDiverged,), max_failures=2, baselines={"random": broken}).run()
    failed = [t for t in study.trials if t.user_attrs.get("baseline") == "random"]
    assert [t.state for t in failed] == [TrialState.FAIL] * 2 and all("error" in t.user_attrs for t in failed)
    assert outcome.stopped == "done" and outcome.best_point == 0.2


def test_a_stage_ends_only_once_no_other_worker_runs_its_baseline_and_a_dead_workers_is_rerun(tmp_path):
    """Another process on this host holds the baseline, RUNNING, then dies: the controller, out of
    grid points, waits for it instead of ending without a baseline, fails it as orphaned and runs it."""
    spec, study = make_study(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        study.enqueue_trial({"init": "random"}, user_attrs={"baseline": "random",
                                                            "worker": {"host": worker_id()["host"], "pid": other.pid}})
        held = study.ask()
        held.suggest_categorical("init", ["random"])
        threading.Timer(1.0, lambda: (other.kill(), other.wait())).start()  # reaped: a zombie is still alive
        started = time.monotonic()
        outcome = SearchController(study, spec, GridSearch((0.1, 0.2)), param="beta", objective=lambda x, t: x,
                                   trial_attrs={"baseline": None}, baselines={"random": lambda t: 0.15},
                                   poll_seconds=0.05).run()
    finally:
        other.kill()
        other.wait()
    assert time.monotonic() - started >= 1.0  # it waited for the other worker
    assert outcome.stopped == "done" and outcome.best_point == 0.2
    assert study.trials[held.number].state == TrialState.FAIL
    done = [(t.user_attrs["baseline"], t.params.get("beta")) for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(done, key=str) == sorted([("random", None), (None, 0.1), (None, 0.2)], key=str)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_a_used_budget_still_waits_for_the_trials_that_used_it(tmp_path):
    """A RUNNING trial counts against the budget; when its worker dies the budget frees up and its
    point is run again, instead of the stage ending with it RUNNING."""
    spec, study = make_study(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        study.enqueue_trial({"beta": 0.3}, user_attrs={"worker": {"host": worker_id()["host"], "pid": other.pid}})
        held = study.ask()
        held.suggest_float("beta", 0.1, 0.3)
        threading.Timer(0.5, lambda: (other.kill(), other.wait())).start()
        outcome = SearchController(study, spec, GridSearch((0.1, 0.2, 0.3)), param="beta",
                                   objective=lambda x, t: x, max_trials=3, poll_seconds=0.05).run()
    finally:
        other.kill()
        other.wait()
    assert outcome.stopped == "budget" and outcome.best_point == 0.3
    assert study.trials[held.number].state == TrialState.FAIL
    assert sorted(points(study)) == [0.1, 0.2, 0.3]
