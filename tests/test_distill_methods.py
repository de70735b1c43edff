"""Tests of the base-method registry (autoselmatch/distill/_methods.py) and DSA gradient matching
(autoselmatch/distill/_gradmatch.py), on digits with tiny budgets."""

import pytest
import torch
from click.testing import CliRunner

from autoselmatch.choices import DISTILL_METHODS
from autoselmatch.cli import cli
from autoselmatch.config import apply_overrides, key_dict, load_preset
from autoselmatch.distill import METHODS, distill, initial_set, method_key, method_revision, selmatch, student_network
from autoselmatch.distill import _methods
from autoselmatch.distill._gradmatch import GradientMatcher, class_match_loss, layer_distance
from autoselmatch.distill._sre2l import STATE_FILE, TEACHER_FILE, RecoverLoss, teacher_dir, train_teacher
from autoselmatch.selection import select_window
from autoselmatch.tune._stage import stage_settings

# DSA at a tiny budget: two iterations of two image updates, one inner epoch, 16 real images per class.
DSA = {
    "device": "cpu",
    "experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "batch"},
    "distill.method": "dsa",
    "distill.iterations": 2,
    "distill.gm_outer_loop": 2,
    "distill.gm_inner_loop": 1,
    "distill.gm_batch_real": 16,
    "distill.eval_every": 0,
    "distill.checkpoint_every": 0,
}
# SRe2L at a tiny budget: a teacher of 2 epochs, recover batches of 20 rows.
SRE2L = {**DSA, "distill.method": "sre2l", "distill.sre2l_teacher_epochs": 2, "distill.sre2l_batch": 20,
         "evaluate.epochs": 2, "evaluate.runs": 1}
CLI_SET = ["--set", "distill.gm_outer_loop=2", "--set", "distill.gm_inner_loop=1", "--set", "distill.gm_batch_real=16",
           "--set", "distill.eval_every=0", "--set", 'experts.model={name="convnet", depth=2, width=16, norm="batch"}']


def make_cfg(tmp_path, **overrides):
    return apply_overrides(load_preset("digits"), {**DSA, "cache_dir": str(tmp_path), **overrides})


@pytest.fixture(scope="module")
def scores(digits):
    return torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(5))


def test_the_registry_holds_exactly_the_method_choices():
    assert sorted(DISTILL_METHODS) == METHODS.names()
    assert [METHODS.get(m).needs for m in ("mtt", "dsa", "sre2l")] == ["experts", "nothing", "teacher"]
    assert [METHODS.get(m).labels for m in ("mtt", "dsa", "sre2l")] == ["hard", "hard", "soft"]


def test_every_method_names_real_distill_settings_and_keeps_its_own():
    from dataclasses import fields

    from autoselmatch.config import DistillConfig, to_dict
    from autoselmatch.distill import method_settings

    known = {f.name for f in fields(DistillConfig)}
    for name in METHODS.names():
        assert set(METHODS.get(name).settings) <= known - {"method", "iterations", "init", "mode"}
        kept = method_settings(DistillConfig(method=name))
        assert set(METHODS.get(name).settings) <= set(kept) and kept["method"] == name
    assert set(method_settings(DistillConfig())) == set(to_dict(DistillConfig())) - {
        k for k in known if k.startswith(("gm_", "sre2l_"))}
    assert not {"lr_img", "syn_steps", "memory", "sre2l_batch"} & set(method_settings(DistillConfig(method="dsa")))


def test_only_runs_that_read_experts_keep_every_experts_setting():
    from autoselmatch.config import RunConfig, apply_overrides, to_dict
    from autoselmatch.distill import expert_settings

    cfg = RunConfig()
    assert expert_settings(cfg) == to_dict(cfg.experts)  # mtt
    for method in ("dsa", "sre2l"):  # the model is the student's / the trained teacher's architecture
        assert expert_settings(apply_overrides(cfg, {"distill.method": method})) == {"model": to_dict(cfg.experts)["model"]}
    teacher = apply_overrides(cfg, {"distill.method": "sre2l", "distill.sre2l_teacher": "expert"})
    assert expert_settings(teacher) == to_dict(cfg.experts)


def test_mtt_is_the_legacy_value_and_leaves_cache_keys_alone():
    cfg = load_preset("digits")
    assert cfg.distill.method == "mtt"
    plain = key_dict("distill", cfg.distill)
    assert not any(k == "method" or k.startswith(("gm_", "sre2l_")) for k in plain)
    assert key_dict("distill", apply_overrides(cfg, {"distill.method": "dsa"}).distill)["method"] == "dsa"


# --------------------------------------------------------------------------------------------
# The DSA distance and matching loss
# --------------------------------------------------------------------------------------------


def test_layer_distance_is_one_minus_cosine_per_output_channel():
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    syn = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])  # cosines 1, 0, -1
    assert layer_distance(real, syn).item() == pytest.approx(0.0 + 1.0 + 2.0, abs=1e-5)
    assert layer_distance(torch.ones(4), -torch.ones(4)).item() == 0.0  # biases and norms do not count


@pytest.mark.parametrize("strategy", ["", "crop", "color", "rotate"])
def test_matching_loss_is_zero_when_the_synthetic_batch_is_the_real_one(digits, strategy):
    cfg = make_cfg("unused")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = student_network(cfg, digits)
    real = digits.normalize(digits.train_images[digits.train_index[digits.train_labels[digits.train_index] == 3][:12]])
    generator = torch.Generator()
    same = class_match_loss(net, real, real.clone(), 3, seed=11, strategy=strategy, generator=generator)
    assert 0.0 <= same.item() < 1e-2  # zero but for the reference distance's 1e-6 in the cosine's denominator
    other = class_match_loss(net, real, real.flip(0)[:5], 3, seed=11, strategy=strategy, generator=generator)
    assert other.item() > 1.0


def test_the_pixels_step_along_the_summed_class_losses_as_in_the_reference_code(digits):
    """Each class's rows get the gradient of that class's own loss, whatever the number of classes
    (a mean over classes would shrink every step num_classes times); the loss reported is the mean."""
    cfg = make_cfg("unused", **{"distill.gm_batch_real": 10_000})  # every real image of a class: no draw matters
    labels = torch.arange(digits.num_classes).repeat_interleave(3)  # (30,) 3 rows per class
    images = digits.normalize(digits.train_images[digits.train_index[:len(labels)]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = student_network(cfg, digits)
    matcher = GradientMatcher(digits, labels, cfg.distill, strategies=())
    loss, grad = matcher.loss_and_grad(net, images, torch.Generator().manual_seed(0))
    class_losses = []
    for c in range(digits.num_classes):
        real = digits.normalize(digits.train_images[matcher.pools[c]])
        syn = images[labels == c].clone().requires_grad_(True)
        class_losses.append(class_match_loss(net, real, syn, c, seed=None, strategy="", generator=torch.Generator()))
        (expected,) = torch.autograd.grad(class_losses[-1], syn)
        torch.testing.assert_close(grad[labels == c], expected, rtol=1e-3, atol=1e-6)
    assert loss.item() == pytest.approx(torch.stack(class_losses).mean().item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# Partial update, window init, resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dsa", "sre2l"])
def test_select_rows_stay_bit_identical_and_distill_rows_move_from_the_window(digits, scores, tmp_path, method):
    cfg = make_cfg(tmp_path, **(SRE2L if method == "sre2l" else {}))
    result = selmatch(digits, cfg, ipc=4, alpha=0.5, beta=0.2, scores=scores)
    window = select_window(scores, digits.train_labels, digits.train_index, ipc=4, beta=0.2, alpha=0.5)
    assert torch.equal(result.indices, window.indices.cpu())  # the window init
    assert torch.equal(result.distill_mask, window.distill_mask.cpu())
    real = digits.normalize(digits.train_images[result.indices]).cpu()
    keep = ~result.distill_mask
    assert torch.equal(result.images[keep], real[keep])  # D_select: bit-identical real images
    assert (result.images[result.distill_mask] - real[result.distill_mask]).abs().amax(dim=(1, 2, 3)).min() > 0
    assert result.iterations == 2 and len(result.loss_history) == 2


def test_select_rows_enter_the_matching_loss(digits, scores, tmp_path):
    """The D_select rows are part of each class's synthetic batch: changing one changes the D_distill update."""
    cfg = make_cfg(tmp_path, **{"distill.iterations": 1})
    start = initial_set(digits, cfg, ipc=4, alpha=0.5, beta=0.2, scores=scores)
    changed = start.images.clone()
    changed[torch.nonzero(~start.distill_mask)[0, 0]] += 1.0
    a = distill(digits, cfg=cfg, experts=None, init_images=start.images, labels=start.labels,
                distill_mask=start.distill_mask)
    b = distill(digits, cfg=cfg, experts=None, init_images=changed, labels=start.labels,
                distill_mask=start.distill_mask)
    assert not torch.equal(a.images[start.distill_mask], b.images[start.distill_mask])


def test_an_interrupted_dsa_run_resumes_bit_for_bit(digits, scores, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, **{"distill.iterations": 3, "distill.checkpoint_every": 1})
    whole = selmatch(digits, cfg, ipc=3, alpha=1.0, beta=0.1, scores=scores)
    calls = {"n": 0}
    real_fault_point = _methods.fault_point

    def interrupt(name):  # Ctrl-C at the end of iteration 2, after its image updates were applied
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_fault_point(name)

    monkeypatch.setattr(_methods, "fault_point", interrupt)
    with pytest.raises(KeyboardInterrupt):
        selmatch(digits, cfg, ipc=3, alpha=1.0, beta=0.1, scores=scores, checkpoint_dir=tmp_path / "run")
    monkeypatch.setattr(_methods, "fault_point", real_fault_point)
    resumed = selmatch(digits, cfg, ipc=3, alpha=1.0, beta=0.1, scores=scores, checkpoint_dir=tmp_path / "run",
                       resume=True)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.loss_history == whole.loss_history


def test_a_method_revision_enters_its_keys_and_leaves_the_other_methods_keys_as_they_were(tmp_path):
    dsa, mtt = make_cfg(tmp_path), make_cfg(tmp_path, **{"distill.method": "mtt"})
    assert method_revision(dsa.distill) == {"revision": 1} and method_revision(mtt.distill) == {}
    assert method_key(dsa)["distill"]["revision"] == 1 and "revision" not in method_key(mtt)["distill"]
    assert stage_settings(dsa, "alpha", 10)["distill"]["revision"] == 1  # a revision-0 DSA study is refused
    assert "revision" not in stage_settings(mtt, "alpha", 10)["distill"]


def test_a_dsa_checkpoint_refuses_a_run_with_other_dsa_settings(digits, scores, tmp_path):
    from autoselmatch.errors import InvalidArgument

    cfg = make_cfg(tmp_path, **{"distill.iterations": 1})
    selmatch(digits, cfg, ipc=2, alpha=1.0, scores=scores, checkpoint_dir=tmp_path / "run")
    other = apply_overrides(cfg, {"distill.gm_lr_img": 0.5})
    with pytest.raises(InvalidArgument, match="made with other settings"):
        selmatch(digits, other, ipc=2, alpha=1.0, scores=scores, checkpoint_dir=tmp_path / "run", resume=True)


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------


def test_cli_distills_with_dsa_without_experts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--quiet", "distill", "--dataset", "digits", "--ipc", "3", "--alpha", "0.5",
                                      "--beta", "0.1", "--method", "dsa", "--iterations", "2", "--device", "cpu",
                                      "--cache-dir", str(tmp_path / "cache"), "--set", "scores.epochs=1",
                                      "--set", "scores.networks=1", *CLI_SET])
    assert result.exit_code == 0, result.output
    assert "studies/distill/digits-ipc3-a0.5-b0.1-window-selmatch-dsa-s0/result.pt" in result.output
    assert not (tmp_path / "cache" / "experts").exists()  # DSA trained no experts


def test_cli_refuses_an_unknown_method():
    result = CliRunner().invoke(cli, ["distill", "--dataset", "digits", "--ipc", "3", "--alpha", "0.5",
                                      "--method", "kip"])
    assert result.exit_code == 2 and "'kip' is not one of 'mtt', 'dsa'" in result.output


def test_tune_runs_with_dsa_and_the_method_is_in_the_studies_settings(tmp_path, monkeypatch):
    import optuna

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [
        "--quiet", "tune", "--dataset", "digits", "--ipc", "3", "--method", "dsa", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--pruner", "none", *CLI_SET,
        "--set", "scores.epochs=1", "--set", "scores.networks=1", "--set", "evaluate.model.width=8",
        "--set", "evaluate.epochs=2", "--set", "evaluate.runs=1", "--set", "distill.iterations=2",
        "--set", "tune.trial_iterations=1", "--set", "tune.beta_seeds=1", "--set", "tune.beta_grid=[0.2]",
        "--set", "tune.alpha_grid=[0.5]", "--set", "tune.alpha_start=0.5", "--set", "tune.baselines=false"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ipc 3: beta 0.2, alpha 0.5")
    alpha = optuna.load_study(study_name="digits-ipc3-alpha", storage="sqlite:///studies/digits.db")
    assert alpha.user_attrs["settings"]["distill"]["method"] == "dsa"
    assert not (tmp_path / "cache" / "experts").exists()


# --------------------------------------------------------------------------------------------
# SRe2L: teacher, recover, relabel
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_cfg(tmp_path_factory):
    return make_cfg(tmp_path_factory.mktemp("teacher-cache"), **SRE2L)


@pytest.fixture(scope="module")
def teacher(digits, teacher_cfg):
    return train_teacher(digits, teacher_cfg, torch.device("cpu"))


def test_the_bn_statistics_loss_falls_when_images_are_recovered(digits, teacher):
    loss = RecoverLoss(teacher, r_bn=1.0)
    x = torch.randn(20, *digits.image_shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.1)
    first = loss.bn_loss(x).item()
    for _ in range(40):
        total, _ = loss(x, None)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert loss.bn_loss(x).item() < 0.5 * first
    assert all(not p.requires_grad for p in teacher.parameters())  # the teacher never moves


def test_the_teacher_is_cached_and_a_model_without_batchnorm_is_refused(digits, teacher, teacher_cfg):
    from autoselmatch.errors import InvalidArgument

    again = train_teacher(digits, teacher_cfg, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), again.state_dict().values()))
    assert (teacher_dir(digits, teacher_cfg) / TEACHER_FILE).is_file()
    assert not (teacher_dir(digits, teacher_cfg) / STATE_FILE).exists()
    plain = apply_overrides(teacher_cfg, {"experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "none"}})
    with pytest.raises(InvalidArgument, match="needs a teacher with BatchNorm"):
        train_teacher(digits, plain, torch.device("cpu"))


def test_sre2l_evaluation_distils_from_the_teacher_and_ignores_hard_labels(digits, teacher_cfg, scores):
    from autoselmatch.distill import evaluate_distilled

    start = initial_set(digits, teacher_cfg, ipc=3, alpha=0.0, beta=0.0, scores=scores)
    shuffled = start.labels[torch.randperm(len(start.labels), generator=torch.Generator().manual_seed(1))]
    a = evaluate_distilled(digits, start.images, start.labels, teacher_cfg, split="val", runs=1)
    b = evaluate_distilled(digits, start.images, shuffled, teacher_cfg, split="val", runs=1)
    assert a.accuracies == b.accuracies and 0.0 < a.mean <= 1.0
    assert "kd" in a.augment
    m = len(digits.split("val")[1])
    assert a.image_hits.shape == (m,) and int(a.image_hits.sum()) == round(a.mean * m)  # one network: 0 or 1 per image


@pytest.mark.faults  # three torch start-ups in subprocesses: about 15 s on an idle machine
def test_the_teacher_resumes_after_sigkill_with_the_weights_of_an_uninterrupted_run(digits, tmp_path):
    import os
    import subprocess
    import sys

    from autoselmatch.fileio import load_torch

    args = [sys.executable, "-m", "autoselmatch", "--quiet", "distill", "--dataset", "digits", "--ipc", "2",
            "--alpha", "1", "--method", "sre2l", "--iterations", "1", "--device", "cpu", "--init", "random",
            "--set", "distill.sre2l_teacher_epochs=3", "--set", "distill.sre2l_batch=20",
            "--set", 'experts.model={name="convnet", depth=2, width=16, norm="batch"}',
            "--set", "distill.eval_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([*args, "--cache-dir", "killed"], cwd=tmp_path, capture_output=True, text=True,
                            env={**env, "AUTOSELMATCH_FAULT": "teacher.epoch:2:KILL"})
    assert killed.returncode == -9, killed.stderr
    cfg = make_cfg(tmp_path / "killed", **{**SRE2L, "distill.sre2l_teacher_epochs": 3})
    folder = teacher_dir(digits, cfg)
    assert load_torch(folder / STATE_FILE)["epoch"] == 2 and not (folder / TEACHER_FILE).exists()
    for cache in ("killed", "whole"):
        done = subprocess.run([*args, "--cache-dir", cache, "--out", f"out-{cache}"], cwd=tmp_path,
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    resumed = load_torch(folder / TEACHER_FILE)["model"]
    whole = load_torch(teacher_dir(digits, make_cfg(tmp_path / "whole", **{**SRE2L, "distill.sre2l_teacher_epochs": 3}))
                       / TEACHER_FILE)["model"]
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not (folder / STATE_FILE).exists()


def test_cli_distills_and_tunes_with_sre2l(tmp_path, monkeypatch):
    import optuna

    monkeypatch.chdir(tmp_path)
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), *CLI_SET, "--set", "scores.epochs=1",
              "--set", "scores.networks=1", "--set", "distill.sre2l_teacher_epochs=1", "--set", "distill.sre2l_batch=20",
              "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=2", "--set", "evaluate.runs=1"]
    result = CliRunner().invoke(cli, ["--quiet", "distill", "--dataset", "digits", "--ipc", "3", "--alpha", "0.5",
                                      "--method", "sre2l", "--iterations", "2", *common])
    assert result.exit_code == 0, result.output
    assert "window-selmatch-sre2l-s0/result.pt" in result.output
    tuned = CliRunner().invoke(cli, [
        "--quiet", "tune", "--dataset", "digits", "--ipc", "3", "--method", "sre2l", "--pruner", "none", *common,
        "--set", "distill.iterations=2", "--set", "tune.trial_iterations=1", "--set", "tune.beta_seeds=1",
        "--set", "tune.beta_grid=[0.2]", "--set", "tune.alpha_grid=[0.5]", "--set", "tune.alpha_start=0.5",
        "--set", "tune.baselines=false"], catch_exceptions=False)
    assert tuned.exit_code == 0, tuned.output
    alpha = optuna.load_study(study_name="digits-ipc3-alpha", storage="sqlite:///studies/digits.db")
    assert alpha.user_attrs["settings"]["distill"]["method"] == "sre2l"
    assert 0.0 < alpha.user_attrs["test_accuracy"]["mean"] <= 1.0
    assert not (tmp_path / "cache" / "experts").exists()


def test_a_cached_experts_last_snapshot_serves_as_the_teacher(digits, tmp_path):
    from autoselmatch.errors import DataError
    from autoselmatch.experts import train_experts
    from autoselmatch.models import FlatModel

    cfg = make_cfg(tmp_path, **{**SRE2L, "experts.num_experts": 1, "experts.epochs": 2,
                                "distill.sre2l_teacher": "expert"})
    with pytest.raises(DataError, match="autoselmatch experts"):
        train_teacher(digits, cfg, torch.device("cpu"))
    store = train_experts(digits, cfg)
    teacher = train_teacher(digits, cfg, torch.device("cpu"))
    assert torch.equal(FlatModel(teacher).flatten(), store.epoch(0, store.num_epochs))
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.running_var.ne(1).all() for m in norms)  # measured on the training split
    assert not teacher.training
    assert not (tmp_path / "teachers").exists()  # nothing trained or cached


def test_evaluate_file_scores_an_sre2l_set_by_kd_from_its_cached_teacher(digits, teacher, teacher_cfg, scores,
                                                                         tmp_path):
    import json

    from autoselmatch.config import to_dict
    from autoselmatch.synset import SyntheticSet

    start = initial_set(digits, teacher_cfg, ipc=2, alpha=0.0, beta=0.0, scores=scores)
    args = ["--quiet", "evaluate", "--device", "cpu", "--runs", "1", "--epochs", "2", "--output", "json",
            "--set", "evaluate.model.width=8"]

    def evaluate(method, cache):
        made = apply_overrides(teacher_cfg, {"distill.method": method})
        path = SyntheticSet(start.images, start.labels, start.distill_mask, dataset="digits",
                            settings={"config": to_dict(made)}).save(tmp_path / f"{method}.pt")
        return CliRunner().invoke(cli, [*args, "--cache-dir", str(cache), str(path)])

    kd = evaluate("sre2l", teacher_cfg.cache_path)
    assert kd.exit_code == 0, kd.output
    record = json.loads(kd.output)
    assert (record["method"], record["protocol"]) == ("sre2l", "teacher-kd") and "+kd(T=4)" in record["augment"]
    for method in ("dsa", "mtt"):
        hard = evaluate(method, teacher_cfg.cache_path)
        assert hard.exit_code == 0, hard.output
        record = json.loads(hard.output)
        assert record["protocol"] == "hard-labels" and "kd" not in record["augment"]
    missing = evaluate("sre2l", tmp_path / "empty")
    assert missing.exit_code != 0
    assert "no SRe2L teacher" in missing.output
    assert "autoselmatch distill --dataset digits --method sre2l" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "teachers").exists()  # nothing trained or created


def test_noise_init_keeps_the_random_init_s_select_rows_and_starts_distill_rows_from_noise(digits, tmp_path):
    random = initial_set(digits, make_cfg(tmp_path, **{"distill.init": "random"}), ipc=4, alpha=0.5, beta=0.0)
    noise = initial_set(digits, make_cfg(tmp_path, **{"distill.init": "noise"}), ipc=4, alpha=0.5, beta=0.0)
    keep = ~noise.distill_mask
    assert torch.equal(noise.distill_mask, random.distill_mask) and torch.equal(noise.labels, random.labels)
    assert torch.equal(noise.images[keep], random.images[keep])  # D_select: the same real samples
    rows = noise.images[noise.distill_mask]
    assert not torch.equal(rows, random.images[noise.distill_mask])
    assert abs(float(rows.mean())) < 0.1 and abs(float(rows.std()) - 1.0) < 0.1  # standard Gaussian
    again = initial_set(digits, make_cfg(tmp_path, **{"distill.init": "noise"}), ipc=4, alpha=0.5, beta=0.0)
    assert torch.equal(again.images, noise.images)  # seeded by cfg.seed
