"""`autoselmatch tune`, `studies` and `dashboard` driven like a user."""

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from autoselmatch.cli import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)


@pytest.mark.parametrize("args, message", [
    (["--ipc", "10,x"], "--ipc must be a comma-separated list of positive integers, got 'x'"),
    (["--ipc", "0"], "--ipc values must be >= 1, got 0"),
    (["--ipc", "10", "--storage", "nosuchdb://h/d"], "storage URL 'nosuchdb://h/d' does not parse"),
    (["--ipc", "10", "--storage", "studies/x.txt"], "storage must be sqlite:///PATH.db"),
    (["--ipc", "10", "--pruner", "asha"], "unknown pruner 'asha'; choose one of: hyperband, median, none"),
    (["--ipc", "10", "--search", "spiral"], "unknown search strategy 'spiral'; choose one of: grid, line, tpe"),
    (["--ipc", "10", "--beta-search", "spiral"], "unknown search strategy 'spiral'; choose one of: grid, line, tpe"),
    (["--ipc", "10", "--workers", "2"], "--workers 2 needs a storage several processes can write"),
    (["--ipc", "10", "--budget", "huge"], "tune.budget must be one of quick, paper, got 'huge'"),
    (["--ipc", "10", "--beta-trials", "0"], "tune.beta_trials must be >= 1, got 0"),
    (["--ipc", "10", "--timeout", "-1"], "--timeout must be > 0 seconds, got -1.0"),
    (["--ipc", "10", "--max-seeds", "0"], "tune.max_seeds must be >= 1, got 0"),
    (["--ipc", "10", "--z", "-1"], "tune.z must be a finite number >= 0, got -1.0"),
    (["--ipc", "10", "--z", "nan"], "tune.z must be a finite number, got nan"),
    (["--ipc", "10,500"], "ipc must be in [1, 125] (smallest class), got 500"),
    (["--ipc", "120", "--set", "tune.beta_grid=[0.2, 0.3]"], "no value of tune.beta_grid is a feasible window start"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("tune", "--dataset", "digits", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "studies" / "digits-artifacts").exists()  # no stage started


def test_print_config_shows_the_tune_flags(tmp_path):
    result = invoke("tune", "--dataset", "digits", "--ipc", "10", "--search", "grid", "--pruner", "none",
                    "--budget", "paper", "--no-prior", "--alpha-trials", "4", "--z", "2", "--max-seeds", "3",
                    "--beta-search", "tpe", "--print-config")
    assert result.exit_code == 0
    for line in ('search = "grid"', 'pruner = "none"', 'budget = "paper"', "prior = false", "alpha_trials = 4",
                 "z = 2.0", "max_seeds = 3", 'beta_search = "tpe"'):
        assert line in result.output


def _make_studies(tmp_path):
    from test_tune_pipeline import Synthetic, config

    from autoselmatch.tune import tune

    tune(config(), "10", storage="sqlite:///studies/digits.db", objectives=Synthetic)


def test_studies_lists_each_study_with_its_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_studies(tmp_path)
    result = invoke("studies")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()  # beta (stage 1) before alpha (stage 2), accuracies in %
    assert lines[0] == "digits-ipc10-beta  (maximize; 10 complete)  best 99.96 % at beta=0.5  baseline random 50.00 %"
    assert lines[1].startswith("digits-ipc10-alpha  (maximize; 5 complete)  best 99.99 % at alpha=0.6  "
                               "baseline mtt 90.00 %")
    assert lines[1].endswith("test 99.99 % (SelMatch chosen); baselines selection-only window (alpha 0) 89.96 %, "
                             "random selection (class-balanced) 40.00 %, MTT (alpha 1, random init) 80.00 %")
    assert lines[2] == ("  SelMatch (alpha 0.6, beta 0.5) beat every baseline on validation, the best of them "
                        "(selection-only window (alpha 0) at beta 0.5) by 0.03 points")
    rows = json.loads(invoke("studies", "--dataset", "digits", "--output", "json").output)["studies"]
    assert [r["name"] for r in rows] == ["digits-ipc10-beta", "digits-ipc10-alpha"]


def test_studies_on_a_missing_storage_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("studies", "--storage", "sqlite:///nothing.db")
    assert result.exit_code == 2 and "no study storage at nothing.db" in result.output
    assert not (tmp_path / "nothing.db").exists()


def test_dashboard_serves_the_storage_on_localhost_with_artifacts(tmp_path, monkeypatch):
    import optuna_dashboard

    monkeypatch.chdir(tmp_path)
    _make_studies(tmp_path)
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: calls.append((storage, kw)))
    result = invoke("dashboard", "--port", "8765")
    assert result.exit_code == 0
    ((storage, kw),) = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8765
    assert Path(kw["artifact_store"]._base_path) == Path("studies/digits-artifacts")
    assert sorted(s.study_name for s in storage.get_all_studies()) == ["digits-ipc10-alpha", "digits-ipc10-beta"]
    assert "http://127.0.0.1:8765/" in result.output


def test_dashboard_refuses_a_missing_artifact_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_studies(tmp_path)
    result = invoke("dashboard", "--artifacts", "nowhere")
    assert result.exit_code == 2 and "artifact folder nowhere does not exist" in result.output


TINY = [
    "--set", "scores.epochs=1", "--set", "scores.networks=1",
    "--set", "experts.num_experts=1", "--set", "experts.model.width=8",
    "--set", "distill.max_start_epoch=2", "--set", "distill.syn_steps=3", "--set", "distill.batch_syn=20",
    "--set", "distill.iterations=4", "--set", "distill.eval_every=2", "--set", "distill.checkpoint_every=2",
    "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=10", "--set", "evaluate.runs=1",
    "--set", "tune.trial_iterations=2", "--set", "tune.beta_seeds=1",
    "--set", "tune.beta_grid=[0.2, 0.3, 0.4]", "--set", "tune.alpha_grid=[0.4, 0.5, 0.6]",
]


@pytest.mark.slow
def test_tune_digits_end_to_end_leaves_a_best_trial_with_a_set_on_disk(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    result = invoke("tune", "--dataset", "digits", "--ipc", "10", "--cache-dir", str(cache_dir), *TINY)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ipc 10: beta ")
    storage = "sqlite:///studies/digits.db"
    alpha = optuna.load_study(study_name="digits-ipc10-alpha", storage=storage)
    best = alpha.best_trial
    assert Path(best.user_attrs["result_path"]).is_file()
    assert max(best.intermediate_values) == 2  # reported at the trial budget's evaluations
    assert any(k.startswith("artifacts:") for k in best.system_attrs)  # grid and set uploaded
    assert Path(alpha.user_attrs["result_path"]).is_file()
    assert 0.0 < alpha.user_attrs["test_accuracy"]["mean"] <= 1.0
    final = alpha.user_attrs["final"]  # tune.choose_on = final: SelMatch's final set is made whichever wins
    assert final["selmatch"]["iterations"] == 4 and Path(final["selmatch"]["result_path"]).is_file()  # continued
    assert alpha.user_attrs["iterations"] == (0 if final["chosen"] in ("window", "random") else 4)
    margin, val_images = final["margin"], 143  # digits: 5 % of the training pool is validation
    assert margin["images"] == val_images and margin["networks"] == 1 and margin["se_networks"] is None  # runs=1
    assert margin["se"] == margin["se_images"] > 0 and f"{val_images} validation images" in final["summary"]
    assert "final_val_hits" not in final["selmatch"] and "final_val_hits" not in json.dumps(final)
    again = invoke("tune", "--dataset", "digits", "--ipc", "10", "--cache-dir", str(cache_dir), *TINY)
    assert again.exit_code == 0 and len(optuna.load_study(study_name="digits-ipc10-alpha",
                                                          storage=storage).trials) == len(alpha.trials)


def test_print_config_needs_no_ipc_but_a_run_does():
    shown = invoke("tune", "--dataset", "digits", "--set", "tune.patience=2", "--print-config")
    assert shown.exit_code == 0 and "patience = 2" in shown.output
    missing = invoke("tune", "--dataset", "digits")
    assert missing.exit_code == 2 and "Missing option '--ipc'" in missing.output
