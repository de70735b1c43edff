"""Noise-aware decisions: paired comparisons, replicates, the unimodal fit, the soft prior, resume."""

import math
import os
import signal
import subprocess
import sys
import textwrap

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from autoselmatch.errors import InvalidArgument
from autoselmatch.storage import open_storage, parse_storage
from autoselmatch.tune import LineSearch, SearchController, report, summarize
from autoselmatch.tune._noise import PointStats, choose, compare, unimodal_fit
from autoselmatch.tune._studies import list_studies

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def point(*values):
    """A point whose replicate r finished with ``values[r]``."""
    return PointStats(values=dict(enumerate(values)), trials=dict(enumerate(range(len(values)))),
                      tried=frozenset(range(len(values))))


def drive(search, f, *, max_rounds=200):
    """Run ``search`` on ``f(point, replicate)``: each round evaluates the first candidate's next replicate."""
    stats = {}
    for _ in range(max_rounds):
        todo = search.candidates(stats)
        if not todo:
            return stats
        p = todo[0]
        values = list(stats[p].values.values()) if p in stats else []
        stats[p] = point(*values, f(p, len(values)))
    raise AssertionError("the search did not end")


# ---- paired comparison -----------------------------------------------------------------------


def test_paired_comparison_uses_the_differences_of_common_replicates():
    a, b = point(0.83, 0.81), point(0.80, 0.79)
    c = compare(a, b)
    assert c.diff == pytest.approx(0.025) and c.pairs == 2
    assert c.se == pytest.approx(0.005)  # stdev(0.03, 0.02) / sqrt(2)
    assert compare(point(0.9), point(0.8)).se is None  # one pair: no error estimate


def test_per_network_accuracies_pair_network_by_network():
    a = PointStats(values={0: 0.8}, networks={0: (0.79, 0.81)}, tried=frozenset({0}))
    b = PointStats(values={0: 0.7}, networks={0: (0.70, 0.70)}, tried=frozenset({0}))
    c = compare(a, b)
    assert c.pairs == 2 and c.diff == pytest.approx(0.1) and c.se == pytest.approx(0.01)


# ---- the walk on noisy values -----------------------------------------------------------------


def test_the_walk_does_not_move_on_a_difference_inside_z_standard_errors():
    # 0.6 beats 0.5 by 0.01 with a paired standard error of 0.02: inside the noise at z = 1
    stats = {0.5: point(0.80, 0.80), 0.6: point(0.83, 0.79), 0.4: point(0.70, 0.70)}
    assert LineSearch(GRID, start=0.5, z=1.0, max_seeds=2).candidates(stats) == []


def test_the_walk_moves_on_a_difference_outside_z_standard_errors():
    # 0.6 beats 0.5 by 0.02 with a standard error of 0.01: outside at z = 1, inside at z = 3
    stats = {0.5: point(0.80, 0.80), 0.6: point(0.83, 0.81), 0.4: point(0.70, 0.70)}
    assert LineSearch(GRID, start=0.5, z=1.0, max_seeds=2).candidates(stats) == [0.7, 0.8]
    assert LineSearch(GRID, start=0.5, z=3.0, max_seeds=2).candidates(stats) == []


def test_replicates_go_to_the_two_contenders_within_noise_only():
    stats = {0.5: point(0.80), 0.6: point(0.81), 0.4: point(0.60)}  # one replicate each: no error estimate yet
    assert LineSearch(GRID, start=0.5, max_seeds=3).candidates(stats) == [0.6, 0.5]
    stats[0.6] = point(0.81, 0.83)
    assert LineSearch(GRID, start=0.5, max_seeds=3).candidates(stats) == [0.5]  # the one with fewer first


def test_replicates_stop_at_max_seeds_and_the_walk_then_decides():
    noise = [0.02, -0.02, 0.015, -0.01, 0.0]
    # 0.5 and 0.6 are level within the noise; 0.4 is clearly below both
    f = lambda x, r: 0.8 - 5 * (x - 0.55) ** 2 + noise[r % len(noise)] * (1 if x != 0.6 else -1)  # noqa: E731
    for max_seeds in (1, 2, 3):
        stats = drive(LineSearch(GRID, start=0.5, z=1.0, max_seeds=max_seeds), f)
        assert max(s.n for s in stats.values()) <= max_seeds
        assert sorted(stats) == [0.4, 0.5, 0.6]  # no move on a difference inside the noise
        assert stats[0.5].n == stats[0.6].n == max_seeds and stats[0.4].n == 1  # only the contenders replicate


def test_without_noise_estimate_or_replicates_the_walk_is_the_plain_line_search():
    f = lambda x, r: 1.0 - (x - 0.72) ** 2  # noqa: E731
    stats = drive(LineSearch(GRID, start=0.5, z=1.0, max_seeds=1), f)
    assert list(stats) == [0.5, 0.6, 0.4, 0.7, 0.8] and choose(stats) == 0.7


def test_a_pruned_point_never_beats_anything_and_is_never_chosen():
    stats = {0.5: point(0.80), 0.6: PointStats(tried=frozenset({0}), pruned=True), 0.4: point(0.70)}
    assert LineSearch(GRID, start=0.5).candidates(stats) == []
    assert choose(stats) == 0.5


def test_bad_z_and_max_seeds_are_refused():
    with pytest.raises(InvalidArgument, match="z must be a finite number >= 0, got -1"):
        LineSearch(GRID, z=-1)
    with pytest.raises(InvalidArgument, match="max_seeds must be >= 1, got 0"):
        LineSearch(GRID, max_seeds=0)


# ---- the soft prior ---------------------------------------------------------------------------


def test_a_rising_curve_crosses_the_priors_bound():
    rising = lambda x, r: x  # noqa: E731
    stats = drive(LineSearch(GRID, start=0.4, bound=0.4), rising)
    assert max(stats) == 0.9 and choose(stats) == 0.9


def test_a_curve_that_falls_at_the_bound_stays_below_it():
    peak = lambda x, r: 1.0 - (x - 0.3) ** 2  # noqa: E731
    stats = drive(LineSearch(GRID, start=0.4, bound=0.4), peak)
    assert max(stats) == 0.4 and choose(stats) == 0.3


def test_a_start_above_the_bound_snaps_below_it_and_ties_go_to_the_smaller_value():
    search = LineSearch(GRID, start=0.7, bound=0.4)
    assert search.start == 0.4 and search.candidates({}) == [0.4, 0.3]  # the neighbour past the bound waits
    flat = {0.4: point(0.8), 0.3: point(0.8), 0.5: point(0.8)}
    assert choose(flat) == 0.3


def test_a_rise_inside_the_noise_does_not_cross_the_bound():
    stats = {0.4: point(0.80, 0.82), 0.3: point(0.80, 0.80)}  # +0.01 with a standard error of 0.01
    assert LineSearch(GRID, start=0.4, bound=0.4, z=1.0, max_seeds=2).candidates(stats) == []
    assert LineSearch(GRID, start=0.4, bound=0.4, z=0.5, max_seeds=2).candidates(stats) == [0.5, 0.6]


# ---- the unimodal fit -------------------------------------------------------------------------


def test_the_fit_rises_then_falls_and_reproduces_unimodal_data():
    assert unimodal_fit([1, 3, 2], [1, 1, 1]) == [1, 3, 2]
    fit = unimodal_fit([1, 3, 2, 2.5, 1], [1, 1, 1, 1, 1])
    assert fit == pytest.approx([1, 3, 2.25, 2.25, 1])


def test_a_lone_noisy_spike_far_from_the_peak_is_not_chosen():
    # 0.8 has one replicate that beats the peak's mean, but 0.6 between them is lower and well measured
    stats = {0.3: point(0.70, 0.71, 0.69), 0.4: point(0.76, 0.75, 0.77), 0.5: point(0.80, 0.79, 0.81),
             0.6: point(0.74, 0.75, 0.73), 0.8: point(0.805)}
    assert max(stats, key=lambda p: stats[p].mean) == 0.8  # the single largest noisy value
    assert choose(stats) == 0.5


@settings(max_examples=200, deadline=None)
@given(peak=st.integers(0, len(GRID) - 1), curvature=st.floats(0.5, 5.0),
       noise=st.lists(st.floats(-1.0, 1.0), min_size=len(GRID) * 3, max_size=len(GRID) * 3))
def test_the_fit_picks_the_peak_of_a_known_concave_curve_from_noisy_samples(peak, curvature, noise):
    """Replicates with noise below half the gap between the peak and its neighbours: the fit's argmax is the peak."""
    f = [-curvature * (x - GRID[peak]) ** 2 for x in GRID]
    gap = min(f[peak] - f[j] for j in (peak - 1, peak + 1) if 0 <= j < len(GRID))
    eps = 0.45 * gap
    stats = {x: point(*(f[i] + eps * noise[3 * i + r] for r in range(3))) for i, x in enumerate(GRID)}
    assert choose(stats) == GRID[peak]


# ---- on a real study ---------------------------------------------------------------------------


class PruneHigh(optuna.pruners.BasePruner):
    """Prunes every trial whose intermediate value is above 1 (the partial value is a lure)."""

    def prune(self, study, trial):
        return trial.last_step is not None and trial.intermediate_values[trial.last_step] > 1.0


def make_study(tmp_path, pruner=None):
    spec = parse_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(storage=open_storage(spec), study_name="s", direction="maximize",
                                pruner=pruner or optuna.pruners.NopPruner(), load_if_exists=True)
    return spec, study


def test_a_pruned_trials_partial_value_is_never_the_chosen_points_value(tmp_path):
    spec, study = make_study(tmp_path, PruneHigh())

    def objective(x, trial):
        report(trial, 9.0 if x == 0.6 else 0.5, 1)  # 0.6 looks best, then is pruned
        return 1.0 - (x - 0.55) ** 2

    outcome = SearchController(study, spec, LineSearch(GRID, start=0.5), param="beta", objective=objective).run()
    assert [t.state for t in study.trials if t.params["beta"] == 0.6] == [TrialState.PRUNED]
    assert outcome.best_point == 0.5 and outcome.best_value == pytest.approx(1.0 - 0.05 ** 2)
    assert outcome.scores[0.6] == -math.inf


def test_replicates_are_ordinary_trials_with_paired_seeds_and_a_rerun_adds_none(tmp_path):
    spec, study = make_study(tmp_path)
    noise = {0: 0.0, 1: 0.03, 2: -0.02}
    calls = []

    def objective(x, trial):
        r = trial.user_attrs["replicate"]
        calls.append((x, r))
        return 0.8 - (x - 0.55) ** 2 + noise[r]  # the same noise at every point: paired, it cancels

    search = LineSearch(GRID, start=0.5, z=1.0, max_seeds=3)
    outcome = SearchController(study, spec, search, param="beta", objective=objective).run()
    again = SearchController(study, spec, search, param="beta", objective=objective).run()
    assert again.ran == 0 and len(calls) == len(set(calls)) == len(study.trials)
    assert {r for _, r in calls} == {0, 1}  # one replicate beyond the first settles every comparison
    assert outcome.best_point == 0.5 and outcome.best_value == pytest.approx(0.8 - 0.05 ** 2 + 0.015)
    assert study.trials[outcome.best_trial].user_attrs["replicate"] == 0


KILLED = textwrap.dedent("""
    import sys, optuna
    from autoselmatch.storage import open_storage, parse_storage
    from autoselmatch.tune import LineSearch, SearchController
    spec = parse_storage(sys.argv[1])
    study = optuna.create_study(storage=open_storage(spec), study_name="s", direction="maximize",
                                load_if_exists=True)
    noise = [0.0, 0.004, -0.003, 0.002]
    def objective(x, trial):
        r = trial.user_attrs["replicate"]
        with open(sys.argv[2], "a") as log:
            log.write(f"{x} {r}\\n")
        return 0.8 - (x - 0.55) ** 2 + noise[r] * (1 if x < 0.55 else -1)
    SearchController(study, spec, LineSearch(GRID, start=0.5, z=1.0, max_seeds=4), param="beta",
                     objective=objective).run()
""").replace("GRID", repr(GRID))


def test_resume_after_sigkill_in_the_middle_of_the_replicates_repeats_no_finished_trial(tmp_path):
    """~20 s: two Python start-ups (the kill needs a process of its own, as in tests/test_faults.py)."""
    url, log = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "calls.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOSELMATCH_FAULT": "tune.told:5:KILL"}
    killed = subprocess.run([sys.executable, "-c", KILLED, url, str(log)], env=env, cwd=tmp_path, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    spec = parse_storage(url)
    before = optuna.load_study(study_name="s", storage=open_storage(spec)).trials
    done = {(t.params["beta"], t.user_attrs["replicate"]): t.value for t in before if t.state == TrialState.COMPLETE}
    assert len(done) == 5 and any(r > 0 for _, r in done)  # killed after a replicate finished
    env.pop("AUTOSELMATCH_FAULT")
    subprocess.run([sys.executable, "-c", KILLED, url, str(log)], env=env, cwd=tmp_path, timeout=120, check=True)
    after = optuna.load_study(study_name="s", storage=open_storage(spec)).trials
    complete = [(t.params["beta"], t.user_attrs["replicate"]) for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) and set(done) <= set(complete)
    runs = [tuple(float(v) if i == 0 else int(v) for i, v in enumerate(line.split()))
            for line in log.read_text().splitlines()]
    assert len(runs) == len(set(runs))  # no finished (point, replicate) ran twice
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in after)


def test_the_studies_listing_shows_the_chosen_point_and_its_mean_not_the_largest_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="d-ipc10-alpha", direction="maximize")
    study.set_user_attr("stage", "alpha")
    dist = {"alpha": optuna.distributions.FloatDistribution(0, 1)}
    for alpha, replicate, value in ((0.5, 0, 0.9), (0.5, 1, 0.6), (0.6, 0, 0.8)):
        study.add_trial(optuna.trial.create_trial(params={"alpha": alpha}, distributions=dist, value=value,
                                                  user_attrs={"replicate": replicate}))
    (row,) = list_studies(url)
    assert row["best_params"] == {"alpha": 0.6} and row["best_value"] == 0.8 and row["best_trial"] == 2


def test_a_study_made_before_replicates_resumes_and_its_trials_read_as_replicate_0(tmp_path):
    from test_tune_pipeline import load, run

    run(tmp_path)
    for stage in ("beta", "alpha"):  # as an older version stored it: no seed scheme
        study = load(tmp_path, f"digits-ipc10-{stage}")
        settings = study.user_attrs["settings"]
        del settings["seed_scheme"]
        study.set_user_attr("settings", settings)
    again = run(tmp_path)
    assert again.ipcs[0].beta.ran == 0 and again.ipcs[0].alpha.ran == 0
    assert load(tmp_path, "digits-ipc10-beta").user_attrs["settings"]["seed_scheme"] == "paired"
    old = optuna.trial.create_trial(params={"beta": 0.3}, value=0.5,
                                    distributions={"beta": optuna.distributions.FloatDistribution(0, 1)})
    assert summarize([old], "beta").stats[0.3].values == {0: 0.5}


def test_replicate_seeds_wrap_around_past_the_largest_seed():
    import dataclasses

    from autoselmatch.choices import MAX_SEED
    from autoselmatch.config import RunConfig, load_preset
    from autoselmatch.tune._stage import replicate_seeds

    cfg = dataclasses.replace(load_preset("digits"), seed=MAX_SEED)
    first = replicate_seeds(cfg, "alpha", 0)
    assert first["seed"] == MAX_SEED
    later = replicate_seeds(cfg, "alpha", 1)
    n = len(later["networks"])
    assert later["seed"] == n - 1 and all(0 <= s <= MAX_SEED for s in later["networks"])
    dataclasses.replace(cfg, seed=later["seed"])  # a valid run seed (RunConfig checks the range)
    assert isinstance(cfg, RunConfig)
