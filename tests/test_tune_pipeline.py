"""The per-IPC pipeline with synthetic objectives: stages, prior, resume, crashes, workers."""

import functools
import os
import time
from pathlib import Path

import optuna
import pytest

from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.errors import InvalidArgument
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

    def finish(self, ctx, *, alpha, beta, trial, study):
        if self.log is not None:  # logged without waiting for peers: one worker makes the final set
            with open(self.log, "a") as f:
                f.write(f"final {alpha:g} {os.getpid()}\n")
        time.sleep(self.finish_delay)
        return {"result_path": str(ctx.workdir / "final.pt"), "test_accuracy": {"mean": trial.value, "std": 0.0}}


def config(**overrides):
    return apply_overrides(load_preset("digits"), {"tune.pruner": "none", **overrides})


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
    assert beta.user_attrs["settings"]["stage"] == "beta" and beta.user_attrs["search"]["strategy"] == "line"
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
    assert max(beta20.user_attrs["search"]["grid"]) == 0.5 and beta20.user_attrs["search"]["start"] == 0.5
    assert max(alpha20.user_attrs["search"]["grid"]) == 0.6
    assert max(t.params["beta"] for t in beta20.trials) <= 0.5
    assert max(t.params["alpha"] for t in alpha20.trials) <= 0.6
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
    assert fresh.ipcs[0].beta.ran == 4
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
    assert result.ipcs[0].beta.ran == 9 and result.ipcs[0].alpha.ran == 10
    assert result.ipcs[0].beta.best_point == 0.5


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
