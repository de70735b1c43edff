"""Search strategies (pure decisions) and the pruner registry."""

import math

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoselmatch.errors import InvalidArgument
from autoselmatch.registry import UnknownNameError
from autoselmatch.tune import PRUNERS, SEARCHES, GridSearch, LineSearch, TPESearch, build_pruner
from autoselmatch.tune._search import check_grid, grid_key, nearest
from autoselmatch.tune._pruners import PeerHyperbandPruner, PeerMedianPruner, PeerSuccessiveHalvingPruner

GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0 .. 1.0


def run_search(search, f):
    """Evaluate what the strategy asks for (first candidate each time); return the scores in order."""
    scores = {}
    while points := search.candidates(scores):
        scores[points[0]] = f(points[0])
    return scores


def argmax(scores):
    return max(scores, key=scores.get)


# ---- line search ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(peak=st.floats(0.0, 1.0), curvature=st.floats(0.5, 20.0))
def test_line_search_from_the_middle_finds_the_max_of_concave_functions_with_fewer_evaluations(peak, curvature):
    f = lambda x: -curvature * (x - peak) ** 2  # noqa: E731
    line = run_search(LineSearch(GRID), f)
    grid = run_search(GridSearch(GRID), f)
    assert f(argmax(line)) == pytest.approx(max(grid.values()))
    assert len(line) <= len(GRID) // 2 + 2 < len(grid) == len(GRID)


@settings(max_examples=60, deadline=None)
@given(peak=st.floats(0.0, 1.0), start=st.sampled_from(GRID))
def test_line_search_from_any_start_finds_the_max_and_never_costs_more_than_the_grid(peak, start):
    f = lambda x: -abs(x - peak)  # noqa: E731
    line = run_search(LineSearch(GRID, start=start), f)
    assert f(argmax(line)) == pytest.approx(max(f(x) for x in GRID))
    assert len(line) <= len(GRID)


def test_line_search_walks_toward_the_better_neighbour_and_stops_after_the_first_drop():
    f = lambda x: -abs(x - 0.8)  # noqa: E731
    scores = run_search(LineSearch(GRID, start=0.5), f)
    assert list(scores) == [0.5, 0.6, 0.4, 0.7, 0.8, 0.9]
    assert argmax(scores) == 0.8


def test_line_search_walks_left_when_the_left_neighbour_is_better():
    scores = run_search(LineSearch(GRID, start=0.5), lambda x: -abs(x - 0.2))
    assert list(scores) == [0.5, 0.6, 0.4, 0.3, 0.2, 0.1]


def test_line_search_stops_at_once_when_the_start_is_the_peak():
    scores = run_search(LineSearch(GRID, start=0.5), lambda x: -abs(x - 0.5))
    assert list(scores) == [0.5, 0.6, 0.4]


@pytest.mark.parametrize("start, peak, expected", [(0.0, 0.0, [0.0, 0.1]), (1.0, 1.0, [1.0, 0.9]),
                                                   (0.0, 1.0, list(GRID)), (0.8, 1.0, [0.8, 0.9, 0.7, 1.0])])
def test_line_search_handles_the_grid_edges(start, peak, expected):
    scores = run_search(LineSearch(GRID, start=start), lambda x: -abs(x - peak))
    assert list(scores) == expected
    assert argmax(scores) == peak


def test_line_search_stops_on_a_flat_top_and_returns_a_point_of_it():
    f = lambda x: min(x, 0.5)  # noqa: E731  concave, flat from 0.5 on
    scores = run_search(LineSearch(GRID, start=0.2), f)
    assert scores[argmax(scores)] == 0.5
    assert len(scores) <= 6
    scores = run_search(LineSearch(GRID, start=0.8), f)
    assert scores[argmax(scores)] == 0.5 and list(scores) == [0.8, 0.9, 0.7]


def test_patience_walks_across_a_flat_stretch_that_stops_a_patience_0_search():
    f = lambda x: max(0.0, x - 0.6)  # noqa: E731  flat, then rising
    assert argmax(run_search(LineSearch(GRID, start=0.5), f)) == 0.5  # stuck on the plateau
    scores = run_search(LineSearch(GRID, start=0.5, patience=2), f)
    assert argmax(scores) == 1.0


def test_patience_tolerates_one_noisy_drop():
    values = {0.3: 0.50, 0.4: 0.55, 0.5: 0.60, 0.6: 0.58, 0.7: 0.66, 0.8: 0.62, 0.9: 0.61}
    f = lambda x: values.get(x, 0.0)  # noqa: E731
    assert argmax(run_search(LineSearch(GRID, start=0.5), f)) == 0.5
    assert argmax(run_search(LineSearch(GRID, start=0.5, patience=1), f)) == 0.7


def test_line_search_looks_ahead_for_a_second_worker():
    search = LineSearch(GRID, start=0.5)
    assert search.candidates({}) == [0.5, 0.6, 0.4]
    assert search.candidates({0.5: 0.0, 0.6: 1.0, 0.4: -1.0}) == [0.7, 0.8]


def test_line_search_treats_failed_points_as_worst():
    scores = {0.5: 0.5, 0.6: -math.inf, 0.4: 0.4}
    assert LineSearch(GRID, start=0.5).candidates(scores) == []


def test_line_search_on_a_single_point_grid():
    assert run_search(LineSearch((0.3,)), lambda x: 1.0) == {0.3: 1.0}


def test_start_defaults_to_the_middle_and_snaps_to_the_grid():
    assert LineSearch(GRID).start == 0.5
    assert LineSearch((0.1, 0.2, 0.3, 0.4)).start == 0.3
    assert LineSearch(GRID, start=0.43).start == 0.4
    assert nearest((0.0, 0.2), 0.1) == 0.0


# ---- grid and tpe --------------------------------------------------------------------------


def test_grid_search_asks_for_every_point_once():
    scores = run_search(GridSearch((0.3, 0.1, 0.2)), lambda x: x)
    assert list(scores) == [0.1, 0.2, 0.3]


def test_tpe_declares_a_stepped_range_and_half_the_grid_as_budget():
    search = TPESearch(GRID, seed=3)
    dist = search.distribution()
    assert (dist.low, dist.high, dist.step) == (0.0, 1.0, 0.1)
    assert search.default_trials() == 6
    assert isinstance(search.sampler(), optuna.samplers.TPESampler)
    assert search.samples and not LineSearch(GRID).samples


def test_tpe_refuses_an_uneven_grid():
    with pytest.raises(InvalidArgument, match="evenly spaced"):
        TPESearch((0.0, 0.1, 0.3))


def test_tpe_refuses_a_single_point():
    with pytest.raises(InvalidArgument, match="at least two"):
        TPESearch((0.5,))


# ---- arguments -----------------------------------------------------------------------------


def test_registry_names_and_unknown_search():
    assert SEARCHES.names() == ["grid", "line", "tpe"]
    with pytest.raises(UnknownNameError, match="unknown search strategy 'spiral'; choose one of: grid, line, tpe"):
        SEARCHES.get("spiral")


def test_negative_patience_is_refused():
    with pytest.raises(InvalidArgument, match="patience must be >= 0, got -1"):
        LineSearch(GRID, patience=-1)


def test_empty_grid_is_refused():
    with pytest.raises(InvalidArgument, match="grid is empty"):
        LineSearch(())


def test_non_finite_grid_value_is_refused():
    with pytest.raises(InvalidArgument, match="finite"):
        check_grid("beta", (0.1, float("nan")))


def test_grid_values_are_sorted_deduplicated_and_rounded():
    assert check_grid("alpha", (0.30000000000000004, 0.1, 0.3)) == (0.1, 0.3)
    assert grid_key(0.30000000000000004) == 0.3


# ---- pruners -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("median", PeerMedianPruner),
                                       ("successive-halving", PeerSuccessiveHalvingPruner),
                                       ("hyperband", PeerHyperbandPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruner_registry_builds_each_pruner(name, cls):
    assert isinstance(build_pruner(name), cls)
    assert name in PRUNERS


def _alpha_study(pruner):
    """An alpha study: two alpha trials at beta 0.4 (step-1 values .5 and .6), and, far ahead at step 1,
    the MTT baseline, two refinement trials (beta searched at alpha 0.6) and an alpha trial of another
    line (beta 0.2). Returns the study and ``pruned(value, param, **user_attrs)``, which asks a trial,
    reports ``value`` at step 1 and says whether ``pruner`` stops it."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    unit = optuna.distributions.FloatDistribution(0, 1)
    init = optuna.distributions.CategoricalDistribution(["random"])

    def add(early, params, **attrs):
        dists = {k: init if k == "init" else unit for k in params}
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=early, params=params,
                                                  distributions=dists, intermediate_values={1: early},
                                                  system_attrs={"completed_rung_0": early},  # successive halving's
                                                  user_attrs={"baseline": None, **attrs}))

    add(0.5, {"alpha": 0.3}, beta=0.4)
    add(0.6, {"alpha": 0.5}, beta=0.4)
    add(0.95, {"init": "random"}, baseline="mtt")
    add(0.9, {"beta": 0.2}, alpha=0.6)
    add(0.9, {"beta": 0.3}, alpha=0.6)
    add(0.9, {"alpha": 0.7}, beta=0.2)

    def pruned(value, param, **attrs):
        trial = study.ask()
        if param == "init":
            trial.suggest_categorical("init", ["random"])
        else:
            trial.suggest_float(param, 0, 1)
        for key, attr in {"baseline": None, **attrs}.items():
            trial.set_user_attr(key, attr)
        trial.report(value, 1)
        return trial.should_prune()

    return study, pruned


def test_the_median_pruner_compares_a_trial_only_with_finished_grid_trials_of_its_own_line():
    """Optuna's median over all six trials (0.9) would prune a trial at 0.58; its peers' median (0.55) does not."""
    study, pruned = _alpha_study(build_pruner("median", startup_trials=2))
    assert not pruned(0.58, "alpha", beta=0.4)
    assert pruned(0.52, "alpha", beta=0.4)
    assert pruned(0.85, "beta", alpha=0.6)  # the refinement's own peers are at 0.9
    assert not pruned(0.01, "init", baseline="mtt")  # a baseline has no peers: it always finishes
    assert optuna.pruners.MedianPruner(n_startup_trials=2).prune(
        study, study.trials[-4])  # what Optuna's own median would have done with the first one


@pytest.mark.parametrize("name", ["successive-halving", "hyperband"])
def test_successive_halving_and_hyperband_rank_a_trial_only_among_its_peers(name):
    """At rung 0 (step 1, a third promoted), a trial at 0.61 is its line's best (.5, .6) and goes on; among all
    seven trials, the baseline's and the other lines' .9-.95 would stop it."""
    study, pruned = _alpha_study(build_pruner(name))
    assert not pruned(0.61, "alpha", beta=0.4)
    assert pruned(0.55, "alpha", beta=0.4)  # its peers now hold .5, .6, .61: not in the top third
    assert not pruned(0.91, "beta", alpha=0.6)  # the best of the refinement's line (.9, .9)
    assert not pruned(0.01, "init", baseline="mtt")  # a baseline is never pruned
    plain = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner())
    for trial in study.trials[:6]:
        plain.add_trial(trial)
    judged = plain.ask()
    judged.suggest_float("alpha", 0, 1)
    judged.report(0.61, 1)
    assert judged.should_prune()  # what Optuna's own successive halving does with the first one


def test_unknown_pruner_is_refused():
    with pytest.raises(UnknownNameError, match="unknown pruner 'asha'; choose one of: hyperband, median, none"):
        build_pruner("asha")


def test_negative_pruner_startup_is_refused():
    with pytest.raises(InvalidArgument, match="startup trials must be >= 0"):
        build_pruner("median", startup_trials=-1)


def test_negative_pruner_warmup_is_refused():
    with pytest.raises(InvalidArgument, match="warmup steps must be >= 0"):
        build_pruner("median", warmup_steps=-2)
