"""The per-IPC pipeline with synthetic objectives: stages, prior, resume, crashes, workers."""

import functools
import os
import time
from pathlib import Path

import optuna
import pytest

from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.errors import InvalidArgument
from autoselmatch.records import ALPHA
from autoselmatch.storage import open_storage, parse_storage
from autoselmatch.tune import parse_ipcs, report, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Synthetic:
    """Concave objectives whose optima shrink with IPC; each evaluation is logged as "stage point pid"."""

    def __init__(self, cfg, *, log=None, delay=0.0, peers=1, finish_delay=0.0):
        self.cfg, self.log, self.delay, self.peers, self.finish_delay = cfg, log, delay, peers, finish_delay

    def max_beta(self, ipc):
        return 0.85

    def _note(self, stage, x):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{stage} {x:g} {os.getpid()}\n")
            self._wait_for_peers(stage)
        time.sleep(self.delay)

    def _wait_for_peers(self, stage, timeout=120.0):
        """Hold the trial until `peers` processes have each started one in this stage (so that
        a slow-starting worker on a busy machine still gets trials to run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = {line.split()[2] for line in open(self.log) if line.startswith(stage + " ")}
            if len(pids) >= self.peers:
                return
            time.sleep(0.05)

    def beta(self, ctx):
        peak = 0.62 - ctx.ipc / 100

        def objective(beta, trial):
            self._note("beta", beta)
            return 1.0 - (beta - peak) ** 2

        return objective

    def alpha(self, ctx, beta):
        peak = 0.71 - ctx.ipc / 100

        def objective(alpha, trial):
            self._note("alpha", alpha)
            value = 1.0 - (alpha - peak) ** 2
            for step in (1, 2, 3):
                report(trial, value * step / 3, step)
            return value

        return objective

    #: Validation score of each candidate's final set (tune.choose_on = final): SelMatch's is its trial's value.
    final_values = {"window": 0.5, "random": 0.5, "mtt": 0.9}

    def finish(self, ctx, *, alpha, beta, trial, validate=False):
        if self.log is not None:  # logged without waiting for peers: one worker makes the final set
            with open(self.log, "a") as f:
                f.write(f"final {alpha:g} {os.getpid()}\n")
        time.sleep(self.finish_delay)
        facts = {"result_path": str(ctx.workdir / "final.pt"), "test_accuracy": {"mean": trial.value, "std": 0.0}}
        return {**facts, "final_val_accuracy": {"mean": trial.value, "std": 0.0}} if validate else facts

    #: Validation scores of the baselines: below every grid point near the optima, so SelMatch wins.
    baseline_values = {"random": 0.5, "mtt": 0.9}

    def baseline(self, ctx, name):
        def objective(trial):
            if self.log is not None:  # no waiting for peers: one worker runs each baseline
                with open(self.log, "a") as f:
                    f.write(f"{name} 0 {os.getpid()}\n")
            value = self.baseline_values[name]
            if name == "mtt":
                for step in (1, 2, 3):
                    report(trial, value * step / 3, step)
            return value

        return objective

    def finish_baseline(self, ctx, *, name, trial, validate=False):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"finish-{name} 0 {os.getpid()}\n")
        facts = {"result_path": str(ctx.workdir / f"final-{name}.pt"), "test_accuracy": {"mean": trial.value - 0.1,
                                                                                          "std": 0.0}}
        return {**facts, "final_val_accuracy": {"mean": self.final_values[name], "std": 0.0}} if validate else facts


def config(**overrides):
    """The digits preset without pruning, with walks that stop at the first drop (the trial counts
    below assume it; ``tune.patience`` itself is tested in test_tune_search.py), and the final choice on
    trial scores (the tests of ``tune.choose_on = final`` say so)."""
    return apply_overrides(load_preset("digits"), {"tune.pruner": "none", "tune.patience": 0,
                                                   "tune.choose_on": "trials", **overrides})


def run(tmp_path, ipcs="10", cfg=None, **kw):
    kw.setdefault("storage", f"sqlite:///{tmp_path / 'studies.db'}")
    return tune(cfg or config(), ipcs, objectives=kw.pop("objectives", Synthetic), **kw)


def load(tmp_path, name, storage=None):
    url = storage or f"sqlite:///{tmp_path / 'studies.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(parse_storage(url)))


def test_one_ipc_runs_both_stages_and_records_the_final_set(tmp_path):
    result = run(tmp_path)
    (r,) = result.ipcs
    assert result.complete and r.beta.best_point == 0.5 and r.alpha.best_point == 0.6
    beta, alpha = load(tmp_path, "digits-ipc10-beta"), load(tmp_path, "digits-ipc10-alpha")
    assert alpha.user_attrs["fixed"] == {"beta": 0.5}
    assert all(t.user_attrs["beta"] == 0.5 for t in alpha.trials)
    assert alpha.user_attrs["test_accuracy"]["mean"] == pytest.approx(alpha.best_value)
    assert alpha.user_attrs["result_path"] == str(
        tmp_path / "studies-artifacts" / "runs" / "digits-ipc10-alpha" / alpha.user_attrs["uid"] / "final.pt")
    assert beta.user_attrs["settings"]["stage"] == "beta" and beta.user_attrs["search"]["strategy"] == "grid"
    assert alpha.user_attrs["search"]["strategy"] == "line"
    assert beta.user_attrs["settings"]["evaluate"]["budget_fraction"] == 0.25  # the digits preset's share
    assert beta.user_attrs["settings"]["beta_augment"] == "dsa"
    assert alpha.user_attrs["settings"]["distill"]["iterations"] == 60  # the digits preset's trial budget
    assert beta.trials[0].user_attrs["fingerprint"] == beta.user_attrs["fingerprint"]
    assert (tmp_path / "studies-artifacts" / "runs" / "digits-ipc10-alpha").is_dir()


def test_prior_bounds_the_later_ipc_by_the_earlier_optimum(tmp_path):
    result = run(tmp_path, "20,10")
    small, large = result.ipcs
    assert (small.ipc, large.ipc) == (10, 20)
    assert large.prior == {"ipc": 10, "alpha": 0.6, "beta": 0.5}
    beta20, alpha20 = load(tmp_path, "digits-ipc20-beta"), load(tmp_path, "digits-ipc20-alpha")
    assert beta20.user_attrs["search"]["bound"] == 0.5 and beta20.user_attrs["search"]["start"] == 0.5
    assert alpha20.user_attrs["search"]["bound"] == 0.6
    assert beta20.user_attrs["prior_overruled"] is None and alpha20.user_attrs["prior_overruled"] is None
    assert max(t.params["beta"] for t in beta20.trials if "beta" in t.params) <= 0.5  # baselines have no beta
    assert max(t.params["alpha"] for t in alpha20.trials if "alpha" in t.params) <= 0.6
    assert beta20.user_attrs["prior"] == {"ipc": 10, "alpha": 0.6, "beta": 0.5}
    assert (large.beta.best_point, large.alpha.best_point) == (0.4, 0.5)


def test_no_prior_searches_the_full_grids(tmp_path):
    result = run(tmp_path, "10,20", cfg=config(**{"tune.prior": False}))
    assert result.ipcs[1].prior is None
    beta20 = load(tmp_path, "digits-ipc20-beta")
    assert max(beta20.user_attrs["search"]["grid"]) == 0.8 and beta20.user_attrs["prior"] is None


def test_rerun_resumes_without_running_finished_trials(tmp_path):
    log = tmp_path / "calls.log"
    factory = functools.partial(Synthetic, log=log)
    run(tmp_path, objectives=factory)
    first = log.read_text()
    again = run(tmp_path, objectives=factory)
    assert log.read_text() == first
    assert again.ipcs[0].beta.ran == 0 and again.ipcs[0].alpha.ran == 0
    assert again.ipcs[0].final["result_path"].endswith("final.pt")


def test_a_study_made_anew_never_shares_the_files_of_a_former_one(tmp_path):
    art = tmp_path / "art"
    first = run(tmp_path, storage=f"sqlite:///{tmp_path / 'a.db'}", artifacts=art).ipcs[0].final["result_path"]
    second = run(tmp_path, storage=f"sqlite:///{tmp_path / 'b.db'}", artifacts=art).ipcs[0].final["result_path"]
    assert Path(first).parent.parent == Path(second).parent.parent == art / "runs" / "digits-ipc10-alpha"
    assert first != second


def test_a_study_made_with_other_settings_is_refused_before_any_work(tmp_path):
    run(tmp_path)
    log = tmp_path / "calls.log"
    with pytest.raises(InvalidArgument, match=r"study 'digits-ipc10-beta' was made with other settings "
                                              r"\(evaluate.lr: 0.1 in the study, 0.05 now\)"):
        run(tmp_path, cfg=config(**{"evaluate.lr": 0.05}), objectives=functools.partial(Synthetic, log=log))
    assert not log.exists()
    forced = run(tmp_path, cfg=config(**{"evaluate.lr": 0.05}), force=True)
    assert forced.ipcs[0].beta.ran == 0
    fresh = run(tmp_path, cfg=config(**{"evaluate.lr": 0.05}), new_study=True)
    assert fresh.ipcs[0].beta.ran == 9 + 1  # every window start, and the random-selection baseline
    assert load(tmp_path, "digits-ipc10-beta").user_attrs["settings"]["evaluate"]["lr"] == 0.05


def test_a_study_from_an_older_version_resumes_when_its_new_settings_are_at_their_defaults(tmp_path):
    """Settings added since a study was made are no change at their defaults; set otherwise, they are."""

    def made_before_compile_mode_existed():
        for stage in ("beta", "alpha"):
            study = load(tmp_path, f"digits-ipc10-{stage}")
            settings = study.user_attrs["settings"]
            del settings["evaluate"]["compile_mode"]
            study.set_user_attr("settings", settings)

    run(tmp_path)
    made_before_compile_mode_existed()
    log = tmp_path / "calls.log"
    again = run(tmp_path, objectives=functools.partial(Synthetic, log=log))
    assert again.ipcs[0].beta.ran == 0 and not log.exists()
    assert load(tmp_path, "digits-ipc10-beta").user_attrs["settings"]["evaluate"]["compile_mode"] == "default"
    made_before_compile_mode_existed()
    with pytest.raises(InvalidArgument, match=r"evaluate.compile_mode: None in the study, 'max-autotune' now"):
        run(tmp_path, cfg=config(**{"evaluate.compile_mode": "max-autotune"}))


def test_how_many_networks_train_at_once_is_no_change_of_settings(tmp_path):
    """evaluate.runs and stack_runs shape only the final report."""
    run(tmp_path)
    again = run(tmp_path, cfg=config(**{"evaluate.stack_runs": 3, "evaluate.runs": 3}))
    assert again.ipcs[0].beta.ran == 0 and again.ipcs[0].alpha.ran == 0


def test_networks_per_alpha_evaluation_are_a_setting_of_the_alpha_study_alone(tmp_path):
    run(tmp_path)
    with pytest.raises(InvalidArgument, match=r"study 'digits-ipc10-alpha' was made with other settings "
                                              r"\(alpha_seeds: 1 in the study, 3 now\)"):
        run(tmp_path, cfg=config(**{"tune.alpha_seeds": 3}))
    assert load(tmp_path, "digits-ipc10-alpha").user_attrs["settings"]["alpha_seeds"] == 1
    assert "alpha_seeds" not in load(tmp_path, "digits-ipc10-beta").user_attrs["settings"]


def test_timeout_stops_before_the_next_trial_and_leaves_a_resumable_study(tmp_path):
    result = run(tmp_path, timeout=4.0, objectives=functools.partial(Synthetic, delay=2.5))
    (r,) = result.ipcs
    assert not result.complete and r.beta.stopped == "timeout" and r.alpha is None
    assert 1 <= len(load(tmp_path, "digits-ipc10-beta").trials) < 4
    assert run(tmp_path).complete


def test_grid_search_runs_every_point(tmp_path):
    result = run(tmp_path, cfg=config(**{"tune.search": "grid"}))
    assert result.ipcs[0].beta.ran == 9 + 1 and result.ipcs[0].alpha.ran == 10 + 1  # + each stage's baseline
    assert result.ipcs[0].beta.best_point == 0.5


class JaggedBeta(Synthetic):
    """Stage 1's curve has a dip between the middle of the grid and its best window start (0.1)."""

    def beta(self, ctx):
        values = {0.0: 0.80, 0.1: 0.97, 0.2: 0.92, 0.3: 0.93, 0.4: 0.94, 0.5: 0.95, 0.6: 0.90, 0.7: 0.91, 0.8: 0.90}

        def objective(beta, trial):
            self._note("beta", beta)
            return values[round(beta, 6)]

        return objective


def test_the_beta_stage_sweeps_every_window_start_by_default_and_the_alpha_stage_still_walks(tmp_path):
    walked = run(tmp_path / "line", cfg=config(**{"tune.beta_search": "line"}), objectives=JaggedBeta)
    assert walked.ipcs[0].beta.best_point == 0.5  # a walk from the middle stops at the first drop
    log = tmp_path / "calls.log"
    swept = run(tmp_path / "grid", objectives=functools.partial(JaggedBeta, log=log))
    (r,) = swept.ipcs
    assert r.beta.best_point == 0.1 and r.beta.ran == 9 + 1  # every window start, and the random baseline
    assert sorted(float(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("beta ")) == \
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    beta, alpha = load(tmp_path / "grid", "digits-ipc10-beta"), load(tmp_path / "grid", "digits-ipc10-alpha")
    assert beta.user_attrs["search"]["strategy"] == "grid" and alpha.user_attrs["search"]["strategy"] == "line"
    assert r.alpha.ran < 10 + 1 and r.alpha.best_point == 0.6  # a walk, not the alpha grid's 10 points
    with pytest.raises(InvalidArgument, match="unknown search strategy 'sweep'"):
        run(tmp_path / "bad", cfg=config(**{"tune.beta_search": "sweep"}))


@pytest.mark.parametrize("text", ["", "10,", "ten", "10,x", "0", "-5", "2.5", "10;20"])
def test_junk_ipc_lists_are_refused(text):
    with pytest.raises(InvalidArgument, match="--ipc"):
        parse_ipcs(text)


def test_ipc_lists_are_sorted_and_deduplicated():
    assert parse_ipcs(" 50, 25,50 ") == [25, 50]
    assert parse_ipcs([10]) == [10]


def test_several_workers_need_a_shareable_storage(tmp_path):
    with pytest.raises(InvalidArgument, match="--workers 2 needs a storage several processes can write"):
        run(tmp_path, workers=2)


def test_new_study_and_force_exclude_each_other(tmp_path):
    with pytest.raises(InvalidArgument, match="exclude each other"):
        run(tmp_path, new_study=True, force=True)


def test_unknown_search_and_pruner_are_refused_before_work(tmp_path):
    with pytest.raises(InvalidArgument, match="unknown search strategy 'walk'"):
        run(tmp_path, cfg=config(**{"tune.search": "walk"}))
    with pytest.raises(InvalidArgument, match="unknown pruner 'asha'"):
        run(tmp_path, cfg=config(**{"tune.pruner": "asha"}))
    assert not (tmp_path / "studies.db").exists()


# --------------------------------------------------------------------------------------------
# Baselines: random selection (beta study) and MTT (alpha study)
# --------------------------------------------------------------------------------------------


def baseline_trials(study, name):
    return [t for t in study.trials if t.user_attrs.get("baseline") == name]


class MttWins(Synthetic):
    """MTT scores above every grid point; its final set is a real set file (so that it exports)."""

    baseline_values = {"random": 0.5, "mtt": 1.25}

    def finish_baseline(self, ctx, *, name, trial, validate=False):
        import torch

        from autoselmatch.synset import SyntheticSet

        n = 3 * ctx.ipc
        result = SyntheticSet(images=torch.zeros(n, 1, 4, 4), labels=torch.arange(n) % 3,
                              distill_mask=torch.full((n,), name == "mtt"), dataset="digits", classes=("a", "b", "c"),
                              mean=(0.5,), std=(0.25,), eta=0.01, settings={"baseline": name})
        path = result.save(ctx.workdir / "final" / name / "result.pt")
        return {"result_path": str(path), "test_accuracy": {"mean": 0.7 if name == "mtt" else 0.4, "std": 0.0,
                                                            "accuracies": [0.7 if name == "mtt" else 0.4]}}


def test_both_baselines_are_trials_once_per_ipc_and_are_not_rerun_on_resume(tmp_path):
    log = tmp_path / "calls.log"
    result = run(tmp_path, "10,20", objectives=functools.partial(Synthetic, log=log))
    for r in result.ipcs:
        beta, alpha = load(tmp_path, f"digits-ipc{r.ipc}-beta"), load(tmp_path, f"digits-ipc{r.ipc}-alpha")
        (rand,), (mtt,) = baseline_trials(beta, "random"), baseline_trials(alpha, "mtt")
        assert baseline_trials(beta, "mtt") == [] and baseline_trials(alpha, "random") == []
        assert rand.params == {"init": "random"} and mtt.params == {"init": "random"}  # never a grid point
        assert (rand.value, mtt.value) == (0.5, 0.9) and sorted(mtt.intermediate_values) == [1, 2, 3]
        assert all(t.user_attrs["baseline"] is None for t in beta.trials + alpha.trials if "init" not in t.params)
        assert (r.beta.best_point, r.alpha.best_point) == ((0.5, 0.6) if r.ipc == 10 else (0.4, 0.5))
        final = r.final
        assert final["chosen"] == "selmatch" and final["val_accuracy"] == pytest.approx(r.alpha.best_value)
        assert final["baselines"]["random"]["val_accuracy"] == 0.5 and final["baselines"]["mtt"]["val_accuracy"] == 0.9
        assert final["baselines"]["random"]["trial"] == rand.number and final["baselines"]["random"]["study"] == beta.study_name
        assert final["baselines"]["mtt"]["test_accuracy"]["mean"] == pytest.approx(0.8)
        window = final["baselines"]["window"]  # stage 1's best window alone: a candidate with no trial of its own
        assert list(final["baselines"]) == ["window", "random", "mtt"]
        assert (window["trial"], window["study"], window["beta"]) == (r.beta.best_trial, beta.study_name, r.beta.best_point)
        assert window["val_accuracy"] == pytest.approx(r.beta.best_value) and window["label"] == "selection-only window (alpha 0)"
        assert final["summary"] == (f"SelMatch (alpha {r.alpha.best_point:g}, beta {r.beta.best_point:g}) beat every "
                                    f"baseline on validation, the best of them (selection-only window (alpha 0) at "
                                    f"beta {r.beta.best_point:g}) by {100 * (r.alpha.best_value - r.beta.best_value):.2f} points")
        assert alpha.user_attrs["final"] == final
    calls = log.read_text().splitlines()
    assert sum(line.startswith("random ") for line in calls) == 2 and sum(line.startswith("mtt ") for line in calls) == 2
    assert sum(line.startswith("finish-window ") for line in calls) == 2  # one window set per IPC
    again = run(tmp_path, "10,20", objectives=functools.partial(Synthetic, log=log))
    assert log.read_text().splitlines() == calls  # nothing rerun, no final set remade
    assert [r.final for r in again.ipcs] == [r.final for r in result.ipcs]


def test_a_baseline_that_wins_on_validation_becomes_the_exported_set(tmp_path):
    from autoselmatch.export import export_trial

    result = run(tmp_path, objectives=MttWins)
    final = result.ipcs[0].final
    alpha = load(tmp_path, "digits-ipc10-alpha")
    (mtt,) = baseline_trials(alpha, "mtt")
    assert final["chosen"] == "mtt" and final["trial"] == mtt.number and (final["alpha"], final["beta"]) == (1.0, 0.0)
    assert final["result_path"].endswith("final/mtt/result.pt") and final["test_accuracy"]["mean"] == 0.7
    assert final["summary"] == ("MTT (alpha 1, random init) beat every SelMatch point on validation by "
                                f"{100 * (1.25 - result.ipcs[0].alpha.best_value):.2f} points; exporting it")
    assert result.ipcs[0].alpha.best_point == 0.6  # the search itself never saw the baseline
    assert final["selmatch"] == {"alpha": 0.6, "beta": 0.5, "trial": result.ipcs[0].alpha.best_trial,
                                 "val_accuracy": result.ipcs[0].alpha.best_value}  # what reproduce reads
    manifest = export_trial(f"sqlite:///{tmp_path / 'studies.db'}", "digits-ipc10-alpha", tmp_path / "out")
    assert manifest["chosen"] == "mtt" and manifest["trial"] == mtt.number and manifest["alpha"] == 1.0
    assert manifest["summary"] == final["summary"] and set(manifest["baselines"]) == {"window", "random", "mtt"}
    assert manifest["test_accuracy"]["mean"] == 0.7 and manifest["settings"] == {"baseline": "mtt"}


def test_a_baseline_that_equals_selmatch_up_to_float_rounding_is_a_tie_and_selmatch_is_kept(tmp_path):
    class Equal(Synthetic):  # the same validation count, averaged in another order
        baseline_values = {"random": 1.0 - (0.6 - 0.61) ** 2 + 1e-12, "mtt": 0.9}

    r = run(tmp_path, objectives=Equal).ipcs[0]
    assert Equal.baseline_values["random"] > r.alpha.best_value  # by float noise alone
    assert r.final["chosen"] == "selmatch"
    assert r.final["summary"].endswith("tied the best baseline on validation (random selection (class-balanced)); "
                                       "a tie goes to SelMatch")


def test_random_selection_that_wins_is_exported_from_the_beta_study(tmp_path):
    from autoselmatch.export import export_trial

    class RandomWins(MttWins):
        baseline_values = {"random": 1.5, "mtt": 1.25}

    final = run(tmp_path, objectives=RandomWins).ipcs[0].final
    assert final["chosen"] == "random" and "trial" not in final and final["alpha"] == 0.0
    assert final["summary"].startswith("random selection (class-balanced) beat every SelMatch point on validation by ")
    manifest = export_trial(f"sqlite:///{tmp_path / 'studies.db'}", "digits-ipc10-alpha", tmp_path / "out")
    assert manifest["chosen"] == "random" and manifest["trial"] is None and manifest["settings"] == {"baseline": "random"}


class WindowWins(MttWins):
    """Stage 1's windows score above every other candidate (validation 1.4996 at beta 0.5)."""

    def beta(self, ctx):
        window = super().beta(ctx)
        return lambda beta, trial: window(beta, trial) + 0.5


def test_stage_1s_window_that_wins_on_validation_is_exported_named_and_reported(tmp_path, monkeypatch):
    import re

    from click.testing import CliRunner

    import autoselmatch.tune._pipeline as pipeline
    from autoselmatch.cli import cli
    from autoselmatch.export import export_trial
    from autoselmatch.report import build_report

    monkeypatch.setattr(pipeline, "SelMatchObjectives", WindowWins)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    result = CliRunner().invoke(cli, ["--quiet", "tune", "--dataset", "digits", "--ipc", "10", "--pruner", "none",
                                      "--set", "tune.choose_on=trials",
                                      "--storage", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ipc 10: beta 0.5, alpha 0.6; chosen set: selection-only window (alpha 0) at beta 0.5, test accuracy" \
        in result.output
    final = load(tmp_path, "digits-ipc10-alpha").user_attrs["final"]
    window = 1.5 - (0.5 - 0.52) ** 2
    assert final["chosen"] == "window" and "trial" not in final and (final["alpha"], final["beta"]) == (0.0, 0.5)
    assert final["val_accuracy"] == pytest.approx(window) and final["result_path"].endswith("final/window/result.pt")
    assert final["selmatch"][ALPHA] == 0.6 and final["baselines"]["window"]["test_accuracy"]["mean"] == 0.4
    assert final["summary"] == ("selection-only window (alpha 0) at beta 0.5 beat every SelMatch point on validation by "
                                f"{100 * (window - final['selmatch']['val_accuracy']):.2f} points; exporting it")
    manifest = export_trial(url, "digits-ipc10-alpha", tmp_path / "out")  # the set of a trial of the beta study
    assert manifest["chosen"] == "window" and manifest["trial"] is None and (manifest["alpha"], manifest["beta"]) == (0.0, 0.5)
    assert manifest["settings"] == {"baseline": "window"}
    build_report(url, "digits", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert re.search(r"<td>selection-only window \(alpha 0\) \(beta 0\.5\)</td><td>149\.96 %</td><td>40\.00 %</td>"
                     r"<td>exported</td>", page)


def test_a_tie_between_the_window_and_random_selection_goes_to_the_window(tmp_path):
    class Tie(Synthetic):  # random selection scores exactly the best window
        baseline_values = {"random": 1.0 - (0.5 - 0.52) ** 2 + 0.5, "mtt": 0.9}

        def beta(self, ctx):
            window = super().beta(ctx)
            return lambda beta, trial: window(beta, trial) + 0.5

    final = run(tmp_path, objectives=Tie).ipcs[0].final
    assert final["chosen"] == "window" and final["baselines"]["random"]["val_accuracy"] == final["val_accuracy"]


def test_choose_on_final_compares_every_candidates_final_set_on_validation(tmp_path):
    class MttFinishesBest(Synthetic):  # MTT trails SelMatch in its trial (0.9) and leads it as a final set
        final_values = {"window": 0.5, "random": 0.5, "mtt": 1.2}

    log = tmp_path / "calls.log"
    objectives = functools.partial(MttFinishesBest, log=log)
    assert run(tmp_path, objectives=objectives, study_prefix="quick").ipcs[0].final["chosen"] == "selmatch"
    log.write_text("")
    r = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=objectives).ipcs[0]
    final = r.final
    assert final["chosen"] == "mtt" and final["choose_on"] == "final" and final["test_accuracy"]["mean"] == pytest.approx(0.8)
    assert final["val_accuracy"] == 0.9  # the chosen candidate's trial score
    assert final["selmatch"]["final_val_accuracy"]["mean"] == pytest.approx(r.alpha.best_value)
    assert final["selmatch"]["test_accuracy"]["mean"] == pytest.approx(r.alpha.best_value)  # made though it lost
    assert final["result_path"].endswith("final-mtt.pt") and final["selmatch"]["result_path"].endswith("final.pt")
    assert "iterations" not in final["selmatch"]  # the synthetic objectives report none
    assert {n: b["final_val_accuracy"]["mean"] for n, b in final["baselines"].items()} == MttFinishesBest.final_values
    assert final["summary"] == ("MTT (alpha 1, random init) beat SelMatch's best point on validation (final sets) by "
                                f"{100 * (1.2 - r.alpha.best_value):.2f} points; exporting it")
    calls = [line.split()[0] for line in log.read_text().splitlines()]
    assert calls[-4:] == ["finish-window", "finish-random", "finish-mtt", "final"]  # SelMatch's set made though it lost
    again = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=objectives)
    assert again.ipcs[0].final == final and log.read_text().count("finish-") == 3  # the record is reused
    import re

    from autoselmatch.report import build_report

    build_report(f"sqlite:///{tmp_path / 'studies.db'}", "digits", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<th>validation accuracy (final set, compared)</th>" in page
    assert re.search(r"<td>MTT \(alpha 1, random init\)</td><td>90\.00 %</td><td>120\.00 %</td><td>80\.00 %</td>"
                     r"<td>exported</td>", page)
    assert re.search(r"<td>SelMatch \(best grid point: alpha 0\.6, beta 0\.5\)</td><td>99\.99 %</td><td>99\.99 %</td>"
                     r"<td>99\.99 %</td><td></td>", page)  # its final set was made and scored though it lost
    assert '"x":["chosen: MTT (alpha 1, random init)","SelMatch","selection-only window (alpha 0)"' in page  # test bars


class PerNetwork(MttWins):
    """Final sets scored by 3 networks each (tune.choose_on = final): ``networks`` per candidate, and,
    where ``hits`` names it, how many were right on each validation image; the baselines' sets are files
    (so that a chosen one exports)."""

    networks = {}
    hits = {}

    def _scored(self, name, facts):
        import torch

        accs = self.networks[name]
        facts = {**facts, "final_val_accuracy": {"mean": sum(accs) / len(accs), "std": 0.0, "accuracies": accs}}
        return {**facts, "final_val_hits": torch.tensor(self.hits[name])} if name in self.hits else facts

    def finish(self, ctx, *, alpha, beta, trial, validate=False):
        return self._scored("selmatch", super().finish(ctx, alpha=alpha, beta=beta, trial=trial, validate=validate))

    def finish_baseline(self, ctx, *, name, trial, validate=False):
        return self._scored(name, super().finish_baseline(ctx, name=name, trial=trial, validate=validate))


@pytest.mark.parametrize("random_acc, window_acc, within", [
    ([0.81, 0.85, 0.83], [0.70, 0.70, 0.70], True),  # leads SelMatch by 1 point, paired differences .01 .03 -.01
    ([0.90, 0.93, 0.92], [0.86, 0.86, 0.86], False),  # leads the window by 6.3 points, differences .04 .07 .06
])
def test_choose_on_final_says_whether_the_lead_is_within_noise(tmp_path, random_acc, window_acc, within):
    class Scored(PerNetwork):
        networks = {"selmatch": [0.80, 0.82, 0.84], "window": window_acc, "random": random_acc, "mtt": [0.5] * 3}

    final = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=Scored).ipcs[0].final
    runner = "selmatch" if within else "window"
    diffs = [a - b for a, b in zip(random_acc, Scored.networks[runner])]
    mean = sum(diffs) / 3
    se = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3 ** 0.5
    assert final["chosen"] == "random" and final["margin"]["against"] == runner and final["margin"]["networks"] == 3
    assert final["margin"]["diff"] == pytest.approx(mean) and final["margin"]["se"] == pytest.approx(se)
    assert final["margin"]["se_networks"] == final["margin"]["se"] and final["margin"]["se_images"] is None
    noise = f"(± {100 * se:.2f} standard error over 3 paired networks{'; within noise' if within else ''})"
    lead = f"{100 * (sum(random_acc) - 2.46) / 3:.2f} points"  # over SelMatch's mean, 0.82
    if not within:
        lead += f", and the next best set (selection-only window (alpha 0) at beta 0.5) by {100 * mean:.2f} {noise}"
    else:
        lead += f" {noise}"
    assert final["summary"] == ("random selection (class-balanced) beat SelMatch's best point on validation "
                                f"(final sets) by {lead}; exporting it")
    from autoselmatch.export import export_trial

    manifest = export_trial(f"sqlite:///{tmp_path / 'studies.db'}", "digits-ipc10-alpha", tmp_path / "out")
    assert manifest["chosen"] == "random" and manifest["margin"] == final["margin"]


def test_the_margin_counts_the_validation_images_noise_when_the_sets_record_it_per_image(tmp_path):
    # 4 validation images, 3 networks: SelMatch's sets get 3, 3, 2, 0 of them right, random selection's 3, 3, 3, 1
    class Scored(PerNetwork):
        networks = {"selmatch": [0.50, 0.75, 0.75], "window": [0.1] * 3, "random": [0.75, 0.75, 1.00],
                    "mtt": [0.1] * 3}
        hits = {"selmatch": [3, 3, 2, 0], "random": [3, 3, 3, 1]}

    final = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=Scored).ipcs[0].final
    margin = final["margin"]
    assert final["chosen"] == "random" and margin["against"] == "selmatch" and (margin["networks"], margin["images"]) == (3, 4)
    per_image = [0, 0, 1 / 3, 1 / 3]  # mean 1/6, sample std 0.19245
    assert margin["diff"] == pytest.approx(1 / 6) and margin["se_images"] == pytest.approx(0.19245 / 2, abs=1e-5)
    assert margin["se_networks"] == pytest.approx(0.144338 / 3 ** 0.5, abs=1e-5)  # differences .25 0 .25
    assert margin["se"] == pytest.approx((margin["se_images"] ** 2 + margin["se_networks"] ** 2) ** 0.5)
    assert final["summary"].endswith("by 16.67 points (± 12.73 standard error: 3 networks 8.33, 4 validation images "
                                     "9.62; within noise); exporting it")
    assert "final_val_hits" not in final["baselines"]["random"] and "final_val_hits" not in final["selmatch"]
    assert sum(per_image) / 4 == pytest.approx(margin["diff"])


def test_a_crash_between_final_sets_costs_none_of_the_candidates_already_made(tmp_path):
    """The window's and random selection's final sets were made and scored when MTT's crashed: the rerun
    makes MTT's and SelMatch's only, and its record (margin over per-image hits included) is a clean run's."""
    class Scored(PerNetwork):
        networks = {"selmatch": [0.50, 0.75, 0.75], "window": [0.1] * 3, "random": [0.75, 0.75, 1.00],
                    "mtt": [0.1] * 3}
        hits = {"selmatch": [3, 3, 2, 0], "random": [3, 3, 3, 1]}
        crash, calls = True, []

        def finish(self, ctx, *, alpha, beta, trial, validate=False):
            Scored.calls.append("selmatch")
            return super().finish(ctx, alpha=alpha, beta=beta, trial=trial, validate=validate)

        def finish_baseline(self, ctx, *, name, trial, validate=False):
            Scored.calls.append(name)
            if name == "mtt" and Scored.crash:
                Scored.crash = False
                raise RuntimeError("killed while scoring MTT's final set")
            return super().finish_baseline(ctx, name=name, trial=trial, validate=validate)

    cfg = config(**{"tune.choose_on": "final"})
    with pytest.raises(RuntimeError, match="killed while scoring"):
        run(tmp_path, cfg=cfg, objectives=Scored)
    final = run(tmp_path, cfg=cfg, objectives=Scored).ipcs[0].final
    assert Scored.calls == ["window", "random", "mtt", "mtt", "selmatch"]
    clean = run(tmp_path / "clean", cfg=cfg, objectives=Scored).ipcs[0].final
    for key in ("chosen", "margin", "summary", "val_accuracy", "test_accuracy"):
        assert final[key] == clean[key]
    for name in ("window", "random", "mtt"):
        assert final["baselines"][name]["final_val_accuracy"] == clean["baselines"][name]["final_val_accuracy"]
    assert final["chosen"] == "random" and final["margin"]["se_images"] == pytest.approx(0.19245 / 2, abs=1e-5)


def test_choose_on_final_with_selmatch_ahead_gives_its_margin_over_the_best_baseline(tmp_path):
    class Scored(PerNetwork):
        networks = {"selmatch": [0.90, 0.93, 0.92], "window": [0.86, 0.86, 0.87], "random": [0.85] * 3,
                    "mtt": [0.5] * 3}

    final = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=Scored).ipcs[0].final
    assert final["chosen"] == "selmatch" and final["margin"]["against"] == "window"
    assert final["summary"].endswith("the best of them (selection-only window (alpha 0) at beta 0.5) by 5.33 points "
                                     "(± 0.88 standard error over 3 paired networks)")  # differences .04 .07 .05


@pytest.mark.parametrize("selmatch_acc, chosen", [([0.90, 0.93, 0.92], "selmatch"), ([0.80, 0.80, 0.80], "window")])
def test_the_summary_and_record_say_which_augmentation_selmatchs_final_set_kept(tmp_path, selmatch_acc, chosen):
    """tune.final_augments: the objectives tried SelMatch's final set with two augmentations on validation and
    kept the better; the record keeps both scores and the summary names the one kept, whichever set won."""
    class Scored(PerNetwork):
        networks = {"selmatch": selmatch_acc, "window": [0.86, 0.86, 0.87], "random": [0.85] * 3, "mtt": [0.5] * 3}

        def finish(self, ctx, *, alpha, beta, trial, validate=False):
            made = super().finish(ctx, alpha=alpha, beta=beta, trial=trial, validate=validate)
            mean = made["final_val_accuracy"]["mean"]
            return {**made, "final_augments": {"combined": mean - 0.0198, "dsa": mean},
                    "evaluation": {"runs": 3, "augment": "dsa"}}

    final = run(tmp_path, cfg=config(**{"tune.choose_on": "final"}), objectives=Scored).ipcs[0].final
    assert final["chosen"] == chosen
    assert final["selmatch"]["final_augments"] == pytest.approx({"combined": sum(selmatch_acc) / 3 - 0.0198,
                                                                 "dsa": sum(selmatch_acc) / 3})
    assert final["selmatch"]["evaluation"]["augment"] == "dsa"
    if chosen == "selmatch":
        assert final["summary"].startswith("SelMatch (alpha 0.6, beta 0.5; trained with dsa, 1.98 points above "
                                           "combined) beat every baseline")
        assert final["evaluation"]["augment"] == "dsa"  # the exported set's protocol
    else:
        assert "beat SelMatch's best point (trained with dsa, 1.98 points above combined) on validation" in \
            final["summary"]
    from autoselmatch.report import build_report

    build_report(f"sqlite:///{tmp_path / 'studies.db'}", "digits", tmp_path / "report.html")
    assert "<td>SelMatch (best grid point: alpha 0.6, beta 0.5; trained with dsa)</td>" in \
        (tmp_path / "report.html").read_text()


def test_baselines_off_measures_none_and_records_the_best_grid_point(tmp_path):
    log = tmp_path / "calls.log"
    result = run(tmp_path, cfg=config(**{"tune.baselines": False}), objectives=functools.partial(MttWins, log=log))
    final = result.ipcs[0].final
    assert "baselines" not in final and "chosen" not in final and "summary" not in final
    assert final["alpha"] == 0.6 and final["result_path"].endswith("final.pt")
    assert not any(line.split()[0] in ("random", "mtt") or line.startswith("finish-") for line in open(log))
    for stage in ("beta", "alpha"):
        study = load(tmp_path, f"digits-ipc10-{stage}")
        assert all("init" not in t.params for t in study.trials)
        assert study.user_attrs["settings"]["baselines"] is False
    with pytest.raises(InvalidArgument, match=r"baselines: False in the study, True now"):
        run(tmp_path)  # a setting of the studies: turning them on asks for --force


def test_a_study_made_before_baselines_existed_resumes_and_gets_them(tmp_path):
    log = tmp_path / "calls.log"
    run(tmp_path, cfg=config(**{"tune.baselines": False}))
    for stage in ("beta", "alpha"):  # as an older version stored it: no baselines setting at all
        study = load(tmp_path, f"digits-ipc10-{stage}")
        settings = study.user_attrs["settings"]
        del settings["baselines"]
        study.set_user_attr("settings", settings)
    again = run(tmp_path, objectives=functools.partial(Synthetic, log=log))
    calls = [line.split()[0] for line in log.read_text().splitlines()]
    assert calls == ["random", "mtt", "finish-window", "finish-random", "finish-mtt", "final"]  # no grid point rerun
    assert again.ipcs[0].beta.ran == 1 and again.ipcs[0].alpha.ran == 1
    assert again.ipcs[0].final["chosen"] == "selmatch"
    assert set(again.ipcs[0].final["baselines"]) == {"window", "random", "mtt"}


def test_the_cli_names_a_winning_baseline_as_the_chosen_set(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import autoselmatch.tune._pipeline as pipeline
    from autoselmatch.cli import cli

    monkeypatch.setattr(pipeline, "SelMatchObjectives", MttWins)
    result = CliRunner().invoke(cli, ["--quiet", "tune", "--dataset", "digits", "--ipc", "10", "--pruner", "none",
                                      "--set", "tune.choose_on=trials",
                                      "--storage", f"sqlite:///{tmp_path / 'studies.db'}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("ipc 10:"))
    assert line.startswith("ipc 10: beta 0.5, alpha 0.6; chosen set: MTT (alpha 1, random init), test accuracy 70.00")
    assert "MTT (alpha 1, random init) beat every SelMatch point on validation" in result.output


class RisingAlpha(Synthetic):
    """Alpha optima that grow with IPC (0.4 at IPC 10, 0.7 at IPC 40): the prior's bound must give way."""

    def alpha(self, ctx, beta):
        peak = 0.3 + ctx.ipc / 100

        def objective(alpha, trial):
            self._note("alpha", alpha)
            return 1.0 - (alpha - peak) ** 2

        return objective


def test_a_curve_still_rising_at_the_priors_bound_steps_past_it_and_the_study_says_so(tmp_path):
    result = run(tmp_path, "10,40", objectives=RisingAlpha)
    small, large = result.ipcs
    assert small.alpha.best_point == 0.4 and large.prior["alpha"] == 0.4
    assert large.alpha.best_point == 0.7  # a hard bound would have stopped at 0.4
    alpha40 = load(tmp_path, "digits-ipc40-alpha")
    assert alpha40.user_attrs["search"]["bound"] == 0.4 and alpha40.user_attrs["search"]["start"] == 0.4
    assert alpha40.user_attrs["prior_overruled"] == {"bound": 0.4, "points": [0.5, 0.6, 0.7, 0.8]}
    assert load(tmp_path, "digits-ipc40-beta").user_attrs["prior_overruled"] is None  # beta optima fall with IPC
    assert alpha40.user_attrs["settings"]["seed_scheme"] == "paired"
    assert alpha40.user_attrs["seeds"] == {"0": {"seed": 0, "networks": [0]}}  # tune.max_seeds = 1
    no_prior = run(tmp_path, "40", cfg=config(**{"tune.prior": False}), objectives=RisingAlpha,
                   study_prefix="free")
    assert no_prior.ipcs[0].alpha.best_point == 0.7 and no_prior.ipcs[0].prior is None


def test_the_baselines_are_named_after_the_base_method(tmp_path, monkeypatch):
    """--method sre2l: the "mtt" baseline (its stored key) is SRe2L at alpha 1 in every place its label shows."""
    import json
    import re

    from click.testing import CliRunner

    import autoselmatch.tune._pipeline as pipeline
    from autoselmatch.cli import cli
    from autoselmatch.export import export_trial
    from autoselmatch.report import build_report

    monkeypatch.setattr(pipeline, "SelMatchObjectives", MttWins)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    result = CliRunner().invoke(cli, ["--quiet", "tune", "--dataset", "digits", "--ipc", "10", "--pruner", "none",
                                      "--set", "tune.choose_on=trials",
                                      "--method", "sre2l", "--storage", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    named = "SRe2L (alpha 1, random init)"
    assert f"chosen set: {named}, test accuracy" in result.output
    assert f"{named} beat every SelMatch point on validation" in result.output and "MTT" not in result.output
    final = load(tmp_path, "digits-ipc10-alpha").user_attrs["final"]
    assert final["chosen"] == "mtt" and final["baselines"]["mtt"]["label"] == named  # the key stays "mtt"
    studies = CliRunner().invoke(cli, ["--quiet", "studies", "--storage", url], catch_exceptions=False).output
    assert "baseline sre2l 125.00 %" in studies and f"({named} chosen)" in studies and "MTT" not in studies
    rows = json.loads(CliRunner().invoke(cli, ["--quiet", "studies", "--storage", url, "--output", "json"]).output)
    assert [r["method"] for r in rows["studies"]] == ["sre2l", "sre2l"]
    build_report(url, "digits", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert re.search(rf"<td>{re.escape(named)}</td><td>125\.00 %</td>", page) and "MTT (alpha 1" not in page
    manifest = export_trial(url, "digits-ipc10-alpha", tmp_path / "out")
    assert manifest["baselines"]["mtt"]["label"] == named and manifest["summary"].startswith(named)


# --------------------------------------------------------------------------------------------
# Refining beta at the chosen alpha (tune.refine_beta)
# --------------------------------------------------------------------------------------------


class Interacting(Synthetic):
    """The alpha objective depends on beta too: at the chosen alpha its best window start is 0.2,
    while stage 1 (windows alone) peaks at 0.5 (IPC 10)."""

    def alpha(self, ctx, beta):
        peak = 0.71 - ctx.ipc / 100

        def objective(alpha, trial):
            self._note("alpha", alpha)
            if self.log is not None:
                with open(self.log, "a") as f:
                    f.write(f"point {beta:g},{alpha:g} {os.getpid()}\n")
            value = 1.0 - (alpha - peak) ** 2 - (beta - 0.2) ** 2
            for step in (1, 2, 3):
                report(trial, value * step / 3, step)
            return value

        return objective


def points_run(log):
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("point ")]


def test_refining_beta_walks_to_the_best_window_start_at_the_chosen_alpha(tmp_path):
    log = tmp_path / "calls.log"
    cfg = config(**{"tune.refine_beta": True})
    result = run(tmp_path, cfg=cfg, objectives=functools.partial(Interacting, log=log))
    (r,) = result.ipcs
    assert (r.beta.best_point, r.alpha.best_point) == (0.5, 0.6)  # stages 1 and 2 as without the refinement
    assert r.refine.best_point == 0.2 and r.optimum == {"alpha": 0.6, "beta": 0.2}
    study = load(tmp_path, "digits-ipc10-alpha")
    refined = [t for t in study.trials if "beta" in t.params]
    assert refined and all(t.user_attrs["alpha"] == 0.6 and t.user_attrs["beta"] == t.params["beta"] for t in refined)
    # the walk from 0.5 at alpha 0.6: 0.5 is stage 2's trial, not rerun; then 0.6, 0.4, 0.3, 0.2, 0.1, and stops
    assert points_run(log).count("0.5,0.6") == 1
    assert sorted(t.params["beta"] for t in refined) == [0.1, 0.2, 0.3, 0.4, 0.6]
    assert study.user_attrs["refine"]["alpha"] == 0.6 and study.user_attrs["refine"]["from"] == 0.5
    assert study.user_attrs["fixed"] == {"beta": 0.5}  # stage 2's record is left as it was
    final = r.final
    assert (final["alpha"], final["beta"]) == (0.6, 0.2) and final["selmatch"]["beta"] == 0.2
    assert study.trials[final["trial"]].params == {"beta": 0.2}
    assert final["val_accuracy"] == pytest.approx(1.0 - 0.01 ** 2) and "beta 0.2" in final["summary"]


def test_the_alpha_search_and_the_refinement_each_see_only_their_own_line(tmp_path):
    from autoselmatch.tune import summarize
    from autoselmatch.tune._studies import list_studies

    cfg = config(**{"tune.refine_beta": True})
    run(tmp_path, cfg=cfg, objectives=Interacting)
    trials = load(tmp_path, "digits-ipc10-alpha").get_trials(deepcopy=False)
    on_alpha = summarize(trials, "alpha", line={"beta": 0.5})
    on_beta = summarize(trials, "beta", line={"alpha": 0.6})
    assert set(on_beta.stats) == {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}  # 0.5: stage 2's trial at alpha 0.6
    assert on_alpha.best[0] == 0.6 and on_alpha.best[1] == pytest.approx(1.0 - 0.01 ** 2 - 0.09)
    assert on_beta.best[0] == 0.2
    rows = {row["name"]: row for row in list_studies(f"sqlite:///{tmp_path / 'studies.db'}")}
    assert rows["digits-ipc10-alpha"]["best_params"] == {"alpha": 0.6}
    assert rows["digits-ipc10-alpha"]["best_value"] == pytest.approx(1.0 - 0.01 ** 2 - 0.09)


def test_a_refined_tune_resumes_without_running_any_point_again(tmp_path):
    log = tmp_path / "calls.log"
    cfg = config(**{"tune.refine_beta": True})
    first = run(tmp_path, cfg=cfg, objectives=functools.partial(Interacting, log=log))
    calls = log.read_text().splitlines()
    again = run(tmp_path, cfg=cfg, objectives=functools.partial(Interacting, log=log))
    assert log.read_text().splitlines() == calls
    assert again.ipcs[0].final == first.ipcs[0].final


def test_refining_keeps_stage_1s_beta_when_it_is_best_at_the_chosen_alpha(tmp_path):
    log = tmp_path / "calls.log"
    cfg = config(**{"tune.refine_beta": True})
    (r,) = run(tmp_path, cfg=cfg, objectives=functools.partial(Synthetic, log=log)).ipcs  # alpha ignores beta
    assert r.refine.best_value == pytest.approx(r.alpha.best_value)  # a flat line: a tie keeps stage 1's beta
    assert r.final["beta"] == 0.5 and r.optimum == {"alpha": 0.6, "beta": 0.5}
    refined = [t for t in load(tmp_path, "digits-ipc10-alpha").trials if "beta" in t.params]
    assert sorted(t.params["beta"] for t in refined) == [0.4, 0.6]  # the neighbours, no better: stop


def test_refinement_is_off_by_default_and_adds_no_trial(tmp_path):
    (r,) = run(tmp_path, objectives=Interacting).ipcs
    assert r.refine is None and r.final["beta"] == 0.5
    assert not [t for t in load(tmp_path, "digits-ipc10-alpha").trials if "beta" in t.params]
