"""Tune workers sharing a storage: the lock, study settings and their fingerprints, listing studies."""

import re

import optuna
import pytest

from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.storage import open_storage, parse_storage
from autoselmatch.tune import open_study
from autoselmatch.tune._storage import settings_diff, storage_lock
from autoselmatch.tune._studies import list_studies, resolve_storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_journal_storage_opens_and_creates_its_folder(tmp_path):
    spec = parse_storage(f"journal:///{tmp_path / 'sub' / 'j.log'}")
    storage = open_storage(spec)
    optuna.create_study(storage=storage, study_name="x")
    assert (tmp_path / "sub" / "j.log").is_file()
    with storage_lock(spec):
        assert (tmp_path / "sub" / "j.log.tune.lock").exists()


SETTINGS = {"stage": "beta", "ipc": 10, "evaluate": {"epochs": 30, "lr": 0.1}}


def _open(storage, settings, **kw):
    return open_study(storage, "d-ipc10-beta", settings=settings, sampler=optuna.samplers.RandomSampler(),
                      pruner=optuna.pruners.NopPruner(), **kw)


def test_settings_are_stored_and_a_mismatch_is_refused(tmp_path):
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    study = _open(storage, SETTINGS)
    assert study.user_attrs["settings"] == SETTINGS and len(study.user_attrs["fingerprint"]) == 16
    study.enqueue_trial({"beta": 0.1})
    _open(storage, dict(SETTINGS))  # same settings: resumes
    other = {**SETTINGS, "evaluate": {"epochs": 50, "lr": 0.1}}
    with pytest.raises(InvalidArgument, match=r"study 'd-ipc10-beta' was made with other settings "
                                              r"\(evaluate.epochs: 30 in the study, 50 now\); pass --new-study"):
        _open(storage, other)


def test_force_continues_and_keeps_the_old_settings(tmp_path):
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    _open(storage, SETTINGS).enqueue_trial({"beta": 0.1})
    other = {**SETTINGS, "ipc": 11}
    study = _open(storage, other, force=True)
    assert len(study.trials) == 1
    assert study.user_attrs["settings"] == other and study.user_attrs["settings_history"] == [SETTINGS]


def test_new_study_replaces_the_old_one(tmp_path):
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    _open(storage, SETTINGS).enqueue_trial({"beta": 0.1})
    study = _open(storage, {**SETTINGS, "ipc": 11}, new_study=True)
    assert len(study.trials) == 0 and study.user_attrs["settings"]["ipc"] == 11


def test_settings_diff_lists_dotted_keys():
    assert settings_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [("a.c", 2, 3), ("d", None, 4)]


def test_settings_diff_skips_keys_added_at_their_default():
    old, new = {"a": {"b": 1}}, {"a": {"b": 1, "new": 0}, "top": "x"}
    assert settings_diff(old, new, {"a": {"new": 0}, "top": "x"}) == []
    assert settings_diff(old, new, {"a": {"new": 5}}) == [("a.new", None, 0), ("top", None, "x")]
    assert settings_diff({"a": {"b": 1, "new": 3}}, new, {"a": {"new": 0}, "top": "x"}) == [("a.new", 3, 0)]


def test_list_studies_summarises_trials_and_best(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="d-ipc10-alpha", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"alpha": 0.5}, value=0.8,
                                              distributions={"alpha": optuna.distributions.FloatDistribution(0, 1)}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    study.set_user_attr("test_accuracy", {"mean": 0.9, "std": 0.01})
    (row,) = list_studies(url)
    assert row["name"] == "d-ipc10-alpha" and row["direction"] == "maximize"
    assert row["trials"]["COMPLETE"] == 1 and row["trials"]["PRUNED"] == 1
    assert row["best_value"] == 0.8 and row["best_params"] == {"alpha": 0.5} and row["test_accuracy"] == 0.9


def test_resolve_storage_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no study storage under studies/"):
        resolve_storage_url(None, None)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "digits.db").touch()
    assert resolve_storage_url(None, None) == "sqlite:///studies/digits.db"
    (tmp_path / "studies" / "fmnist.log").touch()
    with pytest.raises(InvalidArgument, match=r"several storages under studies/ \(digits.db, fmnist.log\)"):
        resolve_storage_url(None, None)
    assert resolve_storage_url(None, "cifar10") == "sqlite:///studies/cifar10.db"
    with pytest.raises(InvalidArgument, match="not both"):
        resolve_storage_url("x.log", "digits")


@pytest.mark.parametrize("overrides, message", [
    ({"tune.heartbeat_interval": 0}, "tune.heartbeat_interval must be >= 1, got 0"),
    ({"tune.grace_period": 60}, r"tune.grace_period must be > tune.heartbeat_interval \(60\), got 60"),
    ({"tune.heartbeat_interval": 5, "tune.grace_period": 4},
     r"tune.grace_period must be > tune.heartbeat_interval \(5\), got 4"),
])
def test_heartbeat_settings_are_checked(overrides, message):
    from autoselmatch.config import apply_overrides, load_preset

    with pytest.raises(InvalidArgument, match=message):
        apply_overrides(load_preset("digits"), overrides)


def test_a_worker_joining_a_study_just_created_elsewhere_uses_its_creators_uid(tmp_path):
    import threading

    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    created = optuna.create_study(storage=storage, study_name="d-ipc10-beta", direction="maximize")
    naming = threading.Timer(0.3, created.set_user_attr, args=("uid", "creator1"))  # the creator, a moment later
    naming.start()
    uid = _open(storage, SETTINGS).user_attrs["uid"]  # the folder this worker's files go to
    naming.join()
    assert uid == "creator1" and created.user_attrs["uid"] == "creator1"


# The tiny settings of the command that made tests/fixtures/beta-study-settings-v0.1.0.json (see its README).
OLD_BETA_STUDY = {
    "scores.epochs": 1, "scores.networks": 1, "evaluate.model.width": 8, "evaluate.epochs": 2, "evaluate.runs": 1,
    "tune.beta_seeds": 1, "evaluate.budget_fraction": 1.0, "data.flip": True,  # the digits preset's flip then
}


@pytest.mark.parametrize("beta_augment, refused", [("dsa", True), ("simple", False)])
def test_a_beta_study_from_before_tune_beta_augment_resumes_only_on_crop_and_flip(tmp_path, beta_augment, refused):
    """Old beta trials trained on crop + flip: under the new DSA default the study is refused, not mixed."""
    import json
    from pathlib import Path

    from autoselmatch.config import apply_overrides, load_preset
    from autoselmatch.tune._stage import default_settings, stage_settings

    stored = json.loads((Path(__file__).parent / "fixtures" / "beta-study-settings-v0.1.0.json").read_text())
    assert "beta_augment" not in stored
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    old = optuna.create_study(storage=storage, study_name="d-ipc10-beta", direction="maximize")
    old.set_user_attr("settings", stored)
    cfg = apply_overrides(load_preset("digits"), {**OLD_BETA_STUDY, "device": "cpu", "tune.beta_augment": beta_augment})
    settings = stage_settings(cfg, "beta", 10)
    if refused:
        with pytest.raises(InvalidArgument, match=r"\(beta_augment: None in the study, 'dsa' now\)"):
            _open(storage, settings, defaults=default_settings("beta", 10))
    else:
        study = _open(storage, settings, defaults=default_settings("beta", 10))
        assert study.user_attrs["settings"]["beta_augment"] == "simple"


def test_a_digits_study_from_before_data_flip_is_refused_under_the_preset_without_flips(tmp_path):
    """Its networks trained on mirrored digits; the digits preset now crops only (data.flip = false)."""
    import json
    from pathlib import Path

    from autoselmatch.config import apply_overrides, load_preset
    from autoselmatch.tune._stage import default_settings, stage_settings

    stored = json.loads((Path(__file__).parent / "fixtures" / "beta-study-settings-v0.1.0.json").read_text())
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    optuna.create_study(storage=storage, study_name="d-ipc10-beta", direction="maximize").set_user_attr("settings",
                                                                                                        stored)
    values = {**OLD_BETA_STUDY, "device": "cpu", "tune.beta_augment": "simple"}
    del values["data.flip"]
    settings = stage_settings(apply_overrides(load_preset("digits"), values), "beta", 10)
    with pytest.raises(InvalidArgument, match=r"flip"):
        _open(storage, settings, defaults=default_settings("beta", 10))


# --------------------------------------------------------------------------------------------
# The alpha study's settings hold the base method's distill settings only
# --------------------------------------------------------------------------------------------


def _alpha_study(tmp_path, settings):
    storage = open_storage(parse_storage(f"sqlite:///{tmp_path / 's.db'}"))
    old = optuna.create_study(storage=storage, study_name="d-ipc10-alpha", direction="maximize")
    old.set_user_attr("settings", settings)
    old.set_user_attr("uid", "stored01")  # as open_study names a study it makes (else it waits for the name)
    return storage


def _open_alpha(storage, cfg):
    from autoselmatch.tune._stage import default_settings, stage_settings

    return open_study(storage, "d-ipc10-alpha", settings=stage_settings(cfg, "alpha", 10),
                      sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner(),
                      defaults=default_settings("alpha", 10))


@pytest.mark.parametrize("method, change, refused", [
    ("mtt", {"distill.gm_lr_img": 0.5}, False),
    ("mtt", {"distill.sre2l_temperature": 2.0}, False),
    ("mtt", {"distill.syn_steps": 7}, True),
    ("dsa", {"distill.gm_lr_img": 0.5}, True),
    ("dsa", {"distill.lr_img": 10.0, "distill.syn_steps": 7, "distill.memory": "tesla"}, False),
    ("sre2l", {"distill.momentum": 0.9, "distill.gm_lr_net": 0.1}, False),
    ("sre2l", {"distill.sre2l_temperature": 2.0}, True),
    ("mtt", {"distill.method": "dsa"}, True),
    ("mtt", {"experts.epochs": 3}, True),
    ("dsa", {"experts.epochs": 3, "experts.num_experts": 2}, False),
    ("dsa", {"experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "batch"}}, True),
    ("sre2l", {"experts.lr": 0.5}, False),
    ("sre2l", {"distill.sre2l_teacher": "expert"}, True),
])
def test_an_alpha_study_refuses_only_changes_of_its_base_method_s_settings(tmp_path, method, change, refused):
    from autoselmatch.config import RunConfig, apply_overrides
    from autoselmatch.tune._stage import stage_settings

    cfg = apply_overrides(RunConfig(), {"distill.method": method})
    storage = _alpha_study(tmp_path, stage_settings(cfg, "alpha", 10))
    assert ("gm_lr_img" in stage_settings(cfg, "alpha", 10)["distill"]) == (method == "dsa")
    changed = apply_overrides(cfg, change)
    if refused:
        with pytest.raises(InvalidArgument, match=rf"\({re.escape(next(iter(change)))}[.:]"):
            _open_alpha(storage, changed)
    else:
        assert _open_alpha(storage, changed).user_attrs["settings"] == stage_settings(changed, "alpha", 10)


@pytest.mark.parametrize("method", ["mtt", "dsa"])
def test_an_alpha_study_stored_with_every_distill_setting_resumes(tmp_path, method):
    """Studies stored before the settings were cut down to the method's held all of to_dict(cfg.distill)."""
    from autoselmatch.config import RunConfig, apply_overrides, to_dict
    from autoselmatch.distill import method_revision
    from autoselmatch.tune._stage import stage_settings

    cfg = apply_overrides(RunConfig(), {"distill.method": method})
    now = stage_settings(cfg, "alpha", 10)
    old = {**now, "distill": {**to_dict(cfg.distill), **method_revision(cfg.distill),
                              "iterations": now["distill"]["iterations"]}}
    assert set(old["distill"]) > set(now["distill"])
    storage = _alpha_study(tmp_path, old)
    study = _open_alpha(storage, cfg)
    assert study.user_attrs["settings"] == now and study.user_attrs["settings_history"] == [old]
    storage = _alpha_study(tmp_path / "v", {**now, "distill": {**old["distill"], "lr_img": 10.0}})
    if method == "mtt":  # a change of the method's own setting is still refused
        with pytest.raises(InvalidArgument, match=r"distill\.lr_img: 10\.0 in the study, 1000\.0 now"):
            _open_alpha(storage, cfg)
    else:
        _open_alpha(storage, cfg)


def test_a_dsa_study_from_before_the_method_s_revision_is_refused(tmp_path):
    """Its trials stepped the pixels along the mean of the class losses (DSA revision 0)."""
    from autoselmatch.config import RunConfig, apply_overrides
    from autoselmatch.tune._stage import stage_settings

    cfg = apply_overrides(RunConfig(), {"distill.method": "dsa"})
    now = stage_settings(cfg, "alpha", 10)
    storage = _alpha_study(tmp_path, {**now, "distill": {k: v for k, v in now["distill"].items() if k != "revision"}})
    with pytest.raises(InvalidArgument, match=r"distill\.revision: None in the study, 1 now"):
        _open_alpha(storage, cfg)


def test_an_alpha_study_from_before_tune_alpha_augment_resumes_under_the_default_only():
    """Its trials trained with evaluate.augment: unset tune.alpha_augment is no change, dsa is."""
    from autoselmatch.config import RunConfig, apply_overrides
    from autoselmatch.records import ALPHA
    from autoselmatch.tune._stage import default_settings, stage_settings

    now = stage_settings(RunConfig(), ALPHA, 10)
    old = {k: v for k, v in now.items() if k != "alpha_augment"}
    assert now["alpha_augment"] is None
    assert settings_diff(old, now, default_settings(ALPHA, 10)) == []
    dsa = stage_settings(apply_overrides(RunConfig(), {"tune.alpha_augment": "dsa"}), ALPHA, 10)
    assert settings_diff(old, dsa, default_settings(ALPHA, 10)) == [("alpha_augment", None, "dsa")]
