"""The real SelMatch objectives on a tiny digits setup: reports, sets on disk, checkpoint resume."""

import logging
from pathlib import Path

import optuna
import pytest

from autoselmatch.config import RunConfig, apply_overrides, load_preset
from autoselmatch.runtime import LOG
from autoselmatch.tune import SelMatchObjectives, StageContext

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = {
    "scores.epochs": 1, "scores.networks": 1,
    "experts.num_experts": 1, "experts.model.width": 8,
    "distill.max_start_epoch": 2, "distill.syn_steps": 3, "distill.batch_syn": 20,
    "distill.iterations": 4, "distill.eval_every": 2, "distill.checkpoint_every": 1,
    "evaluate.model.width": 8, "evaluate.epochs": 10, "evaluate.runs": 1,
    "tune.trial_iterations": 4, "tune.beta_seeds": 2,
}


class PruneOnceAt(optuna.pruners.BasePruner):
    """Prunes the first trial that reports ``step``; never prunes afterwards."""

    def __init__(self, step):
        self.step, self.fired = step, False

    def prune(self, study, trial):
        if not self.fired and trial.last_step == self.step:
            self.fired = True
            return True
        return False


@pytest.fixture(scope="module")
def objectives(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = apply_overrides(load_preset("digits"), {**TINY, "cache_dir": str(cache), "device": "cpu"})
    return SelMatchObjectives(cfg)


def context(objectives, tmp_path, stage):
    return StageContext(objectives.cfg, 10, f"digits-ipc10-{stage}", tmp_path / "runs" / stage, tmp_path / "art")


def test_max_beta_follows_the_smallest_class(objectives):
    smallest = int(objectives.class_sizes.min())
    assert objectives.max_beta(10) == pytest.approx(1 - 10 / smallest)


def test_beta_objective_reports_validation_accuracy_per_network(objectives, tmp_path):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    value = objectives.beta(context(objectives, tmp_path, "beta"))(0.3, trial)
    study.tell(trial, value)
    frozen = study.trials[0]
    assert 0.0 <= value <= 1.0
    assert frozen.user_attrs["val_accuracy"]["mean"] == value
    assert len(frozen.user_attrs["val_accuracy"]["accuracies"]) == 2  # tune.beta_seeds networks
    steps = frozen.intermediate_values
    assert sorted(steps) == [2, 4]  # 2 epochs (20 % of 10) per network, reported from the second half on;
    assert (steps[2] + steps[4]) / 2 == pytest.approx(value)  # steps count across networks, the last is the result


def test_the_beta_trials_budget_is_logged_by_the_window_objective_only(objectives, tmp_path, caplog):
    ctx = context(objectives, tmp_path, "beta")
    with caplog.at_level(logging.INFO, logger="autoselmatch"):
        objectives.beta(ctx)
        objectives.baseline(ctx, "random")  # the random-selection baseline builds a beta objective of its own
    assert sum("beta trials train 2 networks" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("augment", ["dsa", "simple"])
def test_beta_trials_train_the_window_with_tune_beta_augment(objectives, tmp_path, monkeypatch, augment):
    """The paper's sliding-window experiment trains with DSA (the default); the setting chooses."""
    import dataclasses

    import autoselmatch.evaluate as evaluate

    used = []
    real = evaluate.augment_grouped

    def spy(x, n_distill, name, **kwargs):
        used.append(name)
        return real(x, n_distill, name, **kwargs)

    monkeypatch.setattr(evaluate, "augment_grouped", spy)
    cfg = objectives.cfg
    if augment != cfg.tune.beta_augment:
        cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, beta_augment=augment))
    assert RunConfig().tune.beta_augment == "dsa"
    ctx = StageContext(cfg, 10, "digits-ipc10-beta", tmp_path / "runs", tmp_path / "art")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    objectives.beta(ctx)(0.3, trial)
    assert used and set(used) == {augment}


def test_an_interrupted_alpha_trial_resumes_from_its_checkpoint(objectives, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(LOG, "propagate", True)  # the CLI's setup_logging turns it off
    ctx = context(objectives, tmp_path, "alpha")
    (tmp_path / "art").mkdir()
    objective = objectives.alpha(ctx, beta=0.2)
    study = optuna.create_study(direction="maximize", pruner=PruneOnceAt(2))
    first = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(0.5, first)
    study.tell(first, state=optuna.trial.TrialState.PRUNED)
    point_dir = ctx.workdir / "beta0.2-alpha0.5"
    assert (point_dir / "checkpoint.pt").is_file()

    second = study.ask()
    with caplog.at_level(logging.INFO, logger="autoselmatch"):
        value = objective(0.5, second)
    study.tell(second, value)
    assert "at iteration 2" in caplog.text  # resumed, not restarted
    done = study.trials[1]
    assert Path(done.user_attrs["result_path"]) == (point_dir / "result.pt").resolve()
    assert done.user_attrs["iterations"] == 4 and done.user_attrs["val_accuracy"] == value
    assert sorted(done.intermediate_values) == [2, 4]  # the pre-resume evaluation is reported too
    assert any(key.startswith("artifacts:") for key in done.system_attrs)
    assert len(list((tmp_path / "art").iterdir())) == 3  # grid, curves, set


def one_alpha_trial(objectives, tmp_path, overrides):
    """One alpha trial (beta 0.2, alpha 0.5) under ``overrides``, told to its study: (objectives, config,
    value, frozen trial, the trial's saved set). Scores and experts come from the module's cache."""
    from autoselmatch.distill import DistillResult

    cfg = apply_overrides(objectives.cfg, overrides)
    objs = SelMatchObjectives(cfg)
    (tmp_path / "art").mkdir()
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    value = objs.alpha(context(objs, tmp_path, "alpha"), beta=0.2)(0.5, trial)
    study.tell(trial, value)
    return objs, cfg, value, study.trials[0], DistillResult.load(trial.user_attrs["result_path"])


def test_alpha_trials_score_the_mean_of_tune_alpha_seeds_networks(objectives, tmp_path):
    from autoselmatch.evaluate import evaluate_set

    # 40 epochs: a quick evaluation of 8 epochs, enough for two networks' accuracies to differ
    averaged, cfg, value, _, result = one_alpha_trial(objectives, tmp_path,
                                                      {"tune.alpha_seeds": 2, "evaluate.epochs": 40})
    runs = evaluate_set(averaged.ds, result.images, result.labels, cfg=cfg.evaluate, distill_mask=result.distill_mask,
                        split="val", runs=2, fraction=cfg.evaluate.quick_fraction, seed=cfg.seed)
    assert len(set(runs.accuracies)) == 2  # two different networks...
    assert value == pytest.approx(runs.mean)  # ...whose mean is the score


def test_tune_alpha_fraction_scores_the_trials_set_on_that_share_of_the_final_budget(objectives, tmp_path):
    from autoselmatch.evaluate import evaluate_set

    full, cfg, value, frozen, result = one_alpha_trial(objectives, tmp_path,
                                                       {"tune.alpha_fraction": 1.0, "evaluate.epochs": 40})
    scored = {f: evaluate_set(full.ds, result.images, result.labels, cfg=cfg.evaluate, split="val", runs=1,
                              distill_mask=result.distill_mask, fraction=f, seed=cfg.seed).mean for f in (1.0, 0.2)}
    assert scored[1.0] != scored[0.2]  # 40 and 8 epochs: the two budgets tell apart
    assert value == pytest.approx(scored[1.0]) and frozen.value == pytest.approx(scored[1.0])
    last = frozen.intermediate_values[max(frozen.intermediate_values)]
    assert last == pytest.approx(scored[0.2])  # the pruner's reports stay quick


def test_tune_alpha_augment_trains_the_networks_that_score_the_alpha_trials_and_the_final_set(objectives, tmp_path):
    """tune.alpha_augment = dsa: the trial's value is its set scored by networks trained with DSA on every
    row (not evaluate.augment, combined), and its final set is trained with DSA too."""
    import dataclasses

    from autoselmatch.evaluate import evaluate_set

    objs, cfg, value, frozen, result = one_alpha_trial(objectives, tmp_path, {"tune.alpha_augment": "dsa",
                                                                              "tune.final_augments": [],
                                                                              "evaluate.epochs": 40})
    assert cfg.evaluate.augment == "combined"
    scored = {a: evaluate_set(objs.ds, result.images, result.labels, cfg=dataclasses.replace(cfg.evaluate, augment=a),
                              split="val", runs=1, distill_mask=result.distill_mask, fraction=cfg.evaluate.quick_fraction,
                              seed=cfg.seed).mean for a in ("combined", "dsa")}
    assert scored["dsa"] != scored["combined"]  # the two augmentations tell apart on this set
    assert value == pytest.approx(scored["dsa"])
    made = objs.finish(context(objs, tmp_path, "alpha"), alpha=0.5, beta=0.2, trial=frozen, validate=True)
    assert made["evaluation"]["augment"] == "dsa" and "final_augments" not in made


def test_identical_seeds_give_identical_values_at_one_point_and_a_replicate_has_its_own(objectives, tmp_path):
    """Common random numbers: every trial of a replicate trains from the same seeds, so at one point
    two trials of replicate 0 agree exactly; replicate 1 trains from the next seeds."""
    ctx = context(objectives, tmp_path, "beta")
    objective = objectives.beta(ctx)
    study = optuna.create_study(direction="maximize")
    runs = []
    for replicate in (0, 0, 1):
        study.enqueue_trial({}, user_attrs={"replicate": replicate})
        trial = study.ask()
        runs.append((objective(0.3, trial), trial.user_attrs["network_seeds"],
                     trial.user_attrs["val_accuracy"]["accuracies"]))
    (first, seeds0, accs0), (again, seeds_again, accs_again), (other, seeds1, accs1) = runs
    assert first == again and accs0 == accs_again and seeds0 == seeds_again == [0, 1]
    assert seeds1 == [2, 3] and accs1 != accs0


@pytest.mark.parametrize("barely_moved, warned", [(1e9, True), (0.0, False)])
def test_alpha_trials_record_their_activity_and_warn_once_when_barely_distilled(objectives, tmp_path, caplog,
                                                                              monkeypatch, barely_moved, warned):
    """Every alpha trial stores its set's loss ratio and pixel change; when a trial moved its pixels less than
    reproduce.barely_moved, the stage says once that its trials compare barely distilled sets."""
    monkeypatch.setattr(LOG, "propagate", True)  # the CLI's setup_logging turns it off
    cfg = apply_overrides(objectives.cfg, {"reproduce.barely_moved": barely_moved})
    objs = SelMatchObjectives(cfg)
    (tmp_path / "art").mkdir()
    ctx = context(objs, tmp_path, "alpha")
    objective = objs.alpha(ctx, beta=0.2)
    study = optuna.create_study(direction="maximize")
    with caplog.at_level(logging.WARNING, logger="autoselmatch"):
        for alpha in (0.5, 0.7):
            trial = study.ask()
            study.tell(trial, objective(alpha, trial))
        trial = study.ask()
        study.tell(trial, objs.baseline(ctx, "mtt")(trial))  # the study's MTT baseline: another objective
    from autoselmatch.distill import DistillResult

    for frozen in study.trials:
        saved = DistillResult.load(frozen.user_attrs["result_path"])
        assert 0 < frozen.user_attrs["pixel_change"] == saved.pixel_change == saved.activity[-1]["pixel_change"]
        assert frozen.user_attrs["loss_ratio"] == saved.loss_ratio is not None
    messages = [r.getMessage() for r in caplog.records if "barely distilled" in r.getMessage()]
    assert len(messages) == (1 if warned else 0)  # once per study, not once per trial or objective
    if warned:
        assert "the trial at alpha=0.5 was barely distilled in its 4 iterations" in messages[0]
        assert "raise tune.trial_iterations" in messages[0]


@pytest.mark.parametrize("final_augments, tried", [(("dsa",), ["combined", "dsa"]), ((), None)])
def test_selmatchs_final_set_keeps_the_better_augmentation_on_validation(objectives, tmp_path, final_augments, tried):
    """Under choose_on = final, a final set with D_select and D_distill rows is trained on validation with
    evaluate.augment and each of tune.final_augments; the best trains the test networks. The window, a set
    with no D_distill row, is trained with tune.beta_augment only."""
    objs, cfg, _, frozen, _ = one_alpha_trial(objectives, tmp_path, {"tune.final_augments": list(final_augments),
                                                                      "evaluate.runs": 2})
    ctx = context(objs, tmp_path, "alpha")
    made = objs.finish(ctx, alpha=0.5, beta=0.2, trial=frozen, validate=True)
    if tried is None:
        assert "final_augments" not in made and made["evaluation"]["augment"] == "combined"
    else:
        scores = made["final_augments"]
        assert list(scores) == tried and made["evaluation"]["augment"] == max(scores, key=scores.get)
        assert made["final_val_accuracy"]["mean"] == scores[made["evaluation"]["augment"]]
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"beta": 0.2})
    trial = study.ask({"beta": optuna.distributions.FloatDistribution(0.0, 1.0)})
    study.tell(trial, objs.beta(context(objs, tmp_path, "beta"))(0.2, trial))
    alone = objs.finish_baseline(ctx, name="window", trial=study.trials[0], validate=True)
    assert "final_augments" not in alone and alone["evaluation"]["augment"] == "dsa"  # tune.beta_augment
