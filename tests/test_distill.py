"""Tests of the distillation core (autoselmatch/distill/) and `autoselmatch distill`, on digits."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.distill import (
    CHECKPOINT_FILE,
    DistillResult,
    MatchOutput,
    RunState,
    TrajectoryMatcher,
    distill,
    initial_set,
    pixel_bounds,
    selmatch,
    student_network,
)
from autoselmatch.errors import DataError, InvalidArgument, TrainingDiverged
from autoselmatch.fileio import load_torch
from autoselmatch.models import FlatModel
from autoselmatch.selection import select, select_window
from autoselmatch.synset import SyntheticSet

# Settings shared by the experts fixture and the CLI (as --set options), so both resolve the same experts.
TINY = {
    "device": "cpu",
    "experts.num_experts": 2,
    "experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "batch"},
    "distill.max_start_epoch": 3,
    "distill.expert_epochs": 2,
    "distill.syn_steps": 5,
    "distill.batch_syn": 40,
    "distill.iterations": 6,
    "distill.lr_img": 100.0,
    "distill.lr_teacher": 0.01,
    "distill.eval_every": 0,
    "distill.checkpoint_every": 0,
}
CLI_SET = [
    "--set", "experts.num_experts=2",
    "--set", 'experts.model={name="convnet", depth=2, width=16, norm="batch"}',
    "--set", "distill.max_start_epoch=3", "--set", "distill.expert_epochs=2", "--set", "distill.syn_steps=5",
    "--set", "distill.batch_syn=40", "--set", "distill.eval_every=0", "--set", "distill.checkpoint_every=2",
]



@pytest.fixture(scope="module")
def expert_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("distill-cache")


def make_cfg(cache, **overrides):
    return apply_overrides(load_preset("digits"), {**TINY, "cache_dir": str(cache), **overrides})


@pytest.fixture(scope="module")
def experts(digits, expert_cache):
    from autoselmatch.experts import train_experts

    return train_experts(digits, make_cfg(expert_cache))


@pytest.fixture(scope="module")
def scores(digits):
    return torch.rand(len(digits.train_labels), generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------------------------
# SelMatch's partial update
# --------------------------------------------------------------------------------------------


def test_select_rows_stay_bit_identical_and_distill_rows_change(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 8})
    result = selmatch(digits, cfg, ipc=8, alpha=0.5, beta=0.1, scores=scores, experts=experts)
    window = select_window(scores, digits.train_labels, digits.train_index, ipc=8, beta=0.1, alpha=0.5)
    start = digits.normalize(digits.train_images[window.indices])

    assert torch.equal(result.indices, window.indices)
    assert torch.equal(result.distill_mask, window.distill_mask)
    assert torch.equal(result.labels, digits.train_labels[window.indices])
    select_rows = ~result.distill_mask
    assert torch.equal(result.images[select_rows], start[select_rows])  # bit-identical
    changed = (result.images[result.distill_mask] != start[result.distill_mask]).flatten(1).any(1)
    assert bool(changed.all())  # every D_distill image moved
    assert result.iterations == 8 and len(result.loss_history) == 8
    assert result.eta != cfg.distill.lr_teacher


def test_matching_loss_falls_over_a_few_hundred_iterations(digits, experts, expert_cache):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 240, "distill.init": "random", "distill.batch_syn": 50})
    result = selmatch(digits, cfg, ipc=10, alpha=1.0, experts=experts)
    first = sum(result.loss_history[:30]) / 30
    last = sum(result.loss_history[-30:]) / 30
    assert last < 0.9 * first, (first, last)


def test_alpha_zero_returns_the_window_without_compute(digits, scores, tmp_path):
    cfg = make_cfg(tmp_path / "empty-cache")  # no experts there: any attempt to load them would fail
    result = selmatch(digits, cfg, ipc=6, alpha=0.0, beta=0.3, scores=scores)
    window = select_window(scores, digits.train_labels, digits.train_index, ipc=6, beta=0.3)
    assert torch.equal(result.images, digits.normalize(digits.train_images[window.indices]))
    assert torch.equal(result.indices, window.indices)
    assert not result.distill_mask.any()
    assert result.loss_history == [] and result.iterations == 0
    assert torch.equal(result.to_pixels(), digits.train_images[window.indices])


def test_random_init_is_the_random_selection_baseline(digits, tmp_path):
    cfg = make_cfg(tmp_path, **{"distill.init": "random", "seed": 3})
    start = initial_set(digits, cfg, ipc=7, alpha=0.0, beta=0.0)
    assert torch.equal(start.indices, select("random", None, digits.train_labels, digits.train_index, ipc=7, seed=3))
    counts = torch.bincount(start.labels, minlength=digits.num_classes)
    assert counts.tolist() == [7] * digits.num_classes


def test_merge_mode_keeps_select_rows_and_window_order(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.mode": "merge", "distill.iterations": 3, "distill.batch_syn": 30})
    result = selmatch(digits, cfg, ipc=8, alpha=0.5, beta=0.0, scores=scores, experts=experts)
    window = select_window(scores, digits.train_labels, digits.train_index, ipc=8, beta=0.0, alpha=0.5)
    start = digits.normalize(digits.train_images[window.indices])
    assert torch.equal(result.indices, window.indices)
    assert torch.equal(result.images[~result.distill_mask], start[~result.distill_mask])
    assert not torch.equal(result.images[result.distill_mask], start[result.distill_mask])
    assert result.settings["mode"] == "merge"


# --------------------------------------------------------------------------------------------
# Memory modes: gradients
# --------------------------------------------------------------------------------------------


def _double_matcher_inputs(digits, steps=5, n=40):
    cfg = make_cfg("/unused")
    torch.manual_seed(0)
    flat = FlatModel(student_network(cfg, digits).double())
    start = flat.flatten()
    target = start + 0.05 * torch.randn_like(start)
    labels = torch.arange(n) % digits.num_classes
    images = torch.randn(n, *digits.image_shape, dtype=torch.float64)
    return flat, labels, images, torch.tensor(0.02, dtype=torch.float64), start, target


def _match(flat, labels, images, lr, start, target, *, memory, steps=5, segment=0, seed=1):
    matcher = TrajectoryMatcher(flat, labels, syn_steps=steps, batch_syn=16, memory=memory, segment=segment)
    return matcher(images, lr, start, target, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("segment", [0, 1, 2, 4])
def test_checkpoint_gradients_equal_exact_gradients(digits, segment):
    inputs = _double_matcher_inputs(digits)
    exact = _match(*inputs, memory="exact")
    ckpt = _match(*inputs, memory="checkpoint", segment=segment)
    assert torch.allclose(ckpt.loss, exact.loss, rtol=1e-12, atol=0)
    assert torch.allclose(ckpt.grad_images, exact.grad_images, rtol=1e-9, atol=1e-14)
    assert torch.allclose(ckpt.grad_lr, exact.grad_lr, rtol=1e-9, atol=1e-14)
    assert exact.grad_images.abs().sum() > 0


def test_exact_gradient_matches_finite_differences(digits):
    flat, labels, images, lr, start, target = _double_matcher_inputs(digits)
    out = _match(flat, labels, images, lr, start, target, memory="exact", steps=3)
    direction = torch.randn_like(images)
    eps = 1e-6
    plus = _match(flat, labels, images + eps * direction, lr, start, target, memory="exact", steps=3).loss
    minus = _match(flat, labels, images - eps * direction, lr, start, target, memory="exact", steps=3).loss
    numeric = (plus - minus) / (2 * eps)
    assert torch.allclose((out.grad_images * direction).sum(), numeric, rtol=1e-5)
    lr_plus = _match(flat, labels, images, lr + eps, start, target, memory="exact", steps=3).loss
    lr_minus = _match(flat, labels, images, lr - eps, start, target, memory="exact", steps=3).loss
    assert torch.allclose(out.grad_lr, (lr_plus - lr_minus) / (2 * eps), rtol=1e-5)


def test_checkpoint_mode_run_matches_the_exact_run(digits, experts, expert_cache, scores):
    exact = _run(digits, experts, make_cfg(expert_cache, **{"distill.iterations": 3}), scores)
    ckpt = _run(digits, experts, make_cfg(expert_cache, **{"distill.iterations": 3, "distill.memory": "checkpoint"}),
                scores)
    assert torch.allclose(ckpt.images, exact.images, atol=1e-4)
    assert ckpt.loss_history == pytest.approx(exact.loss_history, rel=1e-5)
    assert ckpt.eta == pytest.approx(exact.eta, rel=1e-6)


def test_tesla_is_exact_for_one_step_and_an_approximation_beyond(digits):
    inputs = _double_matcher_inputs(digits)
    one_exact = _match(*inputs, memory="exact", steps=1)
    one_tesla = _match(*inputs, memory="tesla", steps=1)
    assert torch.allclose(one_tesla.grad_images, one_exact.grad_images, rtol=1e-9, atol=1e-14)
    assert torch.allclose(one_tesla.grad_lr, one_exact.grad_lr, rtol=1e-9, atol=1e-14)

    exact, tesla = _match(*inputs, memory="exact"), _match(*inputs, memory="tesla")
    assert torch.allclose(tesla.loss, exact.loss, rtol=1e-12)
    assert not torch.allclose(tesla.grad_images, exact.grad_images, rtol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(tesla.grad_images.flatten(), exact.grad_images.flatten(), dim=0)
    assert cosine > 0.5  # the dropped terms are second order: the direction is mostly kept


# --------------------------------------------------------------------------------------------
# Run control: resume, callback, divergence
# --------------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def _run(digits, experts, cfg, scores, **kwargs):
    return selmatch(digits, cfg, ipc=8, alpha=0.75, beta=0.1, scores=scores, experts=experts, **kwargs)


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(digits, experts, expert_cache, scores, tmp_path):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 7, "distill.checkpoint_every": 3})
    whole = _run(digits, experts, cfg, scores)

    seen = []

    def stop_at_five(step):
        seen.append((step.iteration, step.loss, step.eta))
        if step.iteration == 5:
            raise Stop

    with pytest.raises(Stop):
        _run(digits, experts, cfg, scores, checkpoint_dir=tmp_path, callback=stop_at_five)
    assert load_torch(tmp_path / CHECKPOINT_FILE)["iteration"] == 5  # saved before the exception propagated
    assert [s[1] for s in seen] == whole.loss_history[:5]

    resumed = _run(digits, experts, cfg, scores, checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.eta == whole.eta
    assert resumed.loss_history == whole.loss_history


def test_keyboard_interrupt_mid_iteration_saves_a_resumable_checkpoint(digits, experts, expert_cache, scores, tmp_path):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 5})
    whole = _run(digits, experts, cfg, scores)

    class InterruptOnThirdDraw:
        def __init__(self, store):
            self.store, self.calls = store, 0
            self.num_experts, self.num_params, self.num_epochs = store.num_experts, store.num_params, store.num_epochs
            self.manifest = store.manifest

        def sample(self, generator, **kwargs):
            self.calls += 1
            pair = self.store.sample(generator, **kwargs)  # advances the generator before the interrupt
            if self.calls == 3:
                raise KeyboardInterrupt
            return pair

    with pytest.raises(KeyboardInterrupt):
        _run(digits, InterruptOnThirdDraw(experts), cfg, scores, checkpoint_dir=tmp_path)
    assert load_torch(tmp_path / CHECKPOINT_FILE)["iteration"] == 2
    resumed = _run(digits, experts, cfg, scores, checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.loss_history == whole.loss_history


def test_run_state_round_trips_through_its_state_dict(digits, tmp_path):
    dc = make_cfg("/unused").distill
    images, rows = digits.normalize(digits.train_images[:12]), torch.tensor([1, 4, 7])
    state = RunState(images, rows, dc, seed=0)
    grads = MatchOutput(torch.tensor(0.5), torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                        torch.tensor(-2.0))
    loss, eta = state.step(grads)
    torch.randint(9, (3,), generator=state.generator)
    assert (state.iteration, state.losses, loss) == (1, [0.5], 0.5) and eta > dc.lr_teacher
    assert torch.equal(state.images()[[0, 2]], images[[0, 2]]) and not torch.equal(state.images()[rows], images[rows])

    again = RunState(images, rows, dc, seed=1)
    torch.save(state.state_dict(), tmp_path / "state.pt")  # as a checkpoint: the optimizers' buffers are not shared
    again.load_state_dict(load_torch(tmp_path / "state.pt"))
    assert torch.equal(again.images(), state.images()) and float(again.lr.detach()) == eta and again.losses == [0.5]
    assert torch.equal(again.generator.get_state(), state.generator.get_state())
    state.step(grads), again.step(grads)  # the momentum came along
    assert torch.equal(again.images(), state.images()) and torch.equal(again.lr, state.lr)


def test_resume_refuses_a_checkpoint_made_with_other_settings(digits, experts, expert_cache, scores, tmp_path):
    _run(digits, experts, make_cfg(expert_cache, **{"distill.iterations": 2}), scores, checkpoint_dir=tmp_path)
    other = make_cfg(expert_cache, **{"distill.iterations": 2, "distill.lr_img": 10.0})
    with pytest.raises(InvalidArgument, match="other settings"):
        _run(digits, experts, other, scores, checkpoint_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_folder_is_refused(digits, experts, expert_cache, scores):
    with pytest.raises(InvalidArgument, match="checkpoint_dir"):
        _run(digits, experts, make_cfg(expert_cache), scores, resume=True)


def test_callback_gets_quick_evaluations_at_the_cadence(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 5, "distill.eval_every": 2})
    steps, calls = [], []

    def evaluator(images, labels, mask):
        calls.append((images.shape, int(mask.sum())))
        return 0.5 + len(calls) / 100

    result = _run(digits, experts, cfg, scores, callback=steps.append, evaluator=evaluator)
    assert [s.iteration for s in steps] == [1, 2, 3, 4, 5]
    assert [s.accuracy for s in steps] == [None, 0.51, None, 0.52, 0.53]  # every 2 iterations and at the end
    assert result.evals == [(2, 0.51), (4, 0.52), (5, 0.53)]
    assert calls[0] == ((80, *digits.image_shape), 60)
    assert all(s.eta > 0 and math.isfinite(s.loss) for s in steps)


def test_non_finite_loss_stops_with_training_diverged(digits, experts, expert_cache, scores):
    class NanTargets:
        num_experts, num_params, num_epochs = experts.num_experts, experts.num_params, experts.num_epochs
        manifest = experts.manifest

        def sample(self, generator, **kwargs):
            start, target = experts.sample(generator, **kwargs)
            return start, torch.full_like(target, float("nan"))

    with pytest.raises(TrainingDiverged, match="iteration 1: matching loss is nan"):
        _run(digits, NanTargets(), make_cfg(expert_cache), scores)


def test_min_start_epoch_matches_only_later_expert_segments(digits, experts, expert_cache, scores):
    class RecordStarts:
        num_experts, num_params, num_epochs = experts.num_experts, experts.num_params, experts.num_epochs
        manifest = experts.manifest

        def __init__(self):
            self.starts = []

        def sample(self, generator, **kwargs):
            expert, start = experts.sample_index(generator, **kwargs)
            self.starts.append(start)
            return experts.pair(expert, start, kwargs["expert_epochs"])

    source = RecordStarts()
    cfg = make_cfg(expert_cache, **{"distill.iterations": 12, "distill.min_start_epoch": 1})
    result = _run(digits, source, cfg, scores)
    assert len(source.starts) == 12 and set(source.starts) == {1, 2}  # T- = 1, T+ = 3: never the init, row 0
    assert result.settings["config"]["distill"]["min_start_epoch"] == 1


def test_clip_keeps_distilled_pixels_in_the_data_range(digits, experts, expert_cache, scores):
    low, high = pixel_bounds(digits, torch.device("cpu"))
    free = _run(digits, experts, make_cfg(expert_cache, **{"distill.lr_img": 1000.0}), scores)
    clipped = _run(digits, experts, make_cfg(expert_cache, **{"distill.lr_img": 1000.0, "distill.clip": True}), scores)
    rows = free.distill_mask
    assert ((free.images[rows] < low) | (free.images[rows] > high)).any()  # unclipped pixels leave the range
    assert ((clipped.images >= low) & (clipped.images <= high)).all()
    assert not torch.equal(clipped.images[rows], free.images[rows])
    assert torch.equal(clipped.images[~rows], free.images[~rows])  # D_select rows stay as selected
    assert clipped.settings["config"]["distill"]["clip"] is True


def test_negative_eta_stops_with_training_diverged(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.lr_teacher": 1e-6, "distill.lr_lr": 1e3, "distill.iterations": 20})
    with pytest.raises(TrainingDiverged, match="eta became"):
        _run(digits, experts, cfg, scores)


# --------------------------------------------------------------------------------------------
# Result file
# --------------------------------------------------------------------------------------------


def test_result_file_round_trips_and_loads_safely(digits, experts, expert_cache, scores, tmp_path):
    result = _run(digits, experts, make_cfg(expert_cache, **{"distill.iterations": 2}), scores)
    path = result.save(tmp_path / "result.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["images"].dtype == torch.float32 and blob["uint8"].dtype == torch.uint8
    assert torch.equal(blob["uint8"], digits.denormalize(result.images))
    assert blob["dataset"] == "digits" and blob["eta"] == result.eta
    settings = json.loads(blob["settings"])
    assert settings["alpha"] == 0.75 and settings["beta"] == 0.1 and settings["config"]["distill"]["syn_steps"] == 5

    again = DistillResult.load(path)
    assert torch.equal(again.images, result.images) and torch.equal(again.distill_mask, result.distill_mask)
    assert again.loss_history == result.loss_history and again.settings == settings

    from autoselmatch.export import load_result

    exported = load_result(path)
    assert torch.equal(exported.to_pixels(), blob["uint8"]) and exported.classes == digits.classes


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_ipc_larger_than_a_class_is_refused(digits, tmp_path):
    with pytest.raises(InvalidArgument, match="ipc must be in"):
        selmatch(digits, make_cfg(tmp_path, **{"distill.init": "random"}), ipc=500, alpha=0.5)


def test_beta_beyond_the_window_is_refused(digits, tmp_path, scores):
    with pytest.raises(InvalidArgument, match="beta"):
        selmatch(digits, make_cfg(tmp_path), ipc=100, alpha=0.5, beta=0.9, scores=scores)


def test_alpha_outside_unit_interval_is_refused(digits, tmp_path, scores):
    with pytest.raises(InvalidArgument, match="alpha must be in"):
        selmatch(digits, make_cfg(tmp_path), ipc=5, alpha=1.5, scores=scores)


def test_missing_experts_name_the_command(digits, tmp_path, scores):
    with pytest.raises(DataError, match="autoselmatch experts"):
        selmatch(digits, make_cfg(tmp_path / "no-experts"), ipc=5, alpha=0.5, scores=scores)


def test_experts_of_another_model_are_refused(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"experts.model": {"name": "convnet", "depth": 2, "width": 8, "norm": "batch"}})
    with pytest.raises(DataError, match="model"):
        _run(digits, experts, cfg, scores)


def test_experts_of_another_dataset_are_refused(digits, experts, expert_cache, scores):
    class Renamed:
        num_experts, num_params, num_epochs = experts.num_experts, experts.num_params, experts.num_epochs
        manifest = {**experts.manifest, "key": {**experts.manifest["key"], "dataset": {"name": "mnist"}}}
        sample = experts.sample

    with pytest.raises(DataError, match="trained on 'mnist'"):
        _run(digits, Renamed(), make_cfg(expert_cache), scores)


def test_start_epoch_plus_expert_epochs_beyond_stored_epochs_is_refused(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.max_start_epoch": 4})
    with pytest.raises(InvalidArgument, match="exceeds the 5 epochs"):
        _run(digits, experts, cfg, scores)


def test_batch_larger_than_the_synthetic_set_is_refused(digits, experts, expert_cache, scores):
    with pytest.raises(InvalidArgument, match="batch_syn"):
        selmatch(digits, make_cfg(expert_cache, **{"distill.batch_syn": 81}), ipc=8, alpha=0.5, scores=scores,
                 experts=experts)


def test_merge_batch_larger_than_d_distill_is_refused(digits, experts, expert_cache, scores):
    cfg = make_cfg(expert_cache, **{"distill.mode": "merge", "distill.batch_syn": 41})
    with pytest.raises(InvalidArgument, match="D_distill"):
        selmatch(digits, cfg, ipc=8, alpha=0.5, scores=scores, experts=experts)


def test_bad_matcher_arguments_are_refused(digits):
    flat, labels, *_ = _double_matcher_inputs(digits)
    with pytest.raises(InvalidArgument, match="memory"):
        TrajectoryMatcher(flat, labels, syn_steps=2, batch_syn=4, memory="fast")
    with pytest.raises(InvalidArgument, match="batch_syn"):
        TrajectoryMatcher(flat, labels, syn_steps=2, batch_syn=41)
    with pytest.raises(InvalidArgument, match="DSA strategies"):
        TrajectoryMatcher(flat, labels, syn_steps=2, batch_syn=4, strategies=("jitter",))


def test_bad_initial_set_shapes_are_refused(digits, experts, expert_cache):
    cfg = make_cfg(expert_cache)
    images = torch.zeros(40, 1, 8, 8)
    labels = torch.arange(40) % 10
    mask = torch.ones(40, dtype=torch.bool)
    with pytest.raises(InvalidArgument, match="init_images must be"):
        distill(digits, cfg=cfg, experts=experts, init_images=torch.zeros(40, 3, 8, 8), labels=labels, distill_mask=mask)
    with pytest.raises(InvalidArgument, match="labels must be in"):
        distill(digits, cfg=cfg, experts=experts, init_images=images, labels=labels + 5, distill_mask=mask)
    with pytest.raises(InvalidArgument, match="distill_mask"):
        distill(digits, cfg=cfg, experts=experts, init_images=images, labels=labels, distill_mask=mask.long())


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_distills_writes_a_result_and_resumes(experts, expert_cache, tmp_path):
    out = tmp_path / "run"
    args = ["--device", "cpu", "distill", "-d", "digits", "--cache-dir", str(expert_cache), *CLI_SET,
            "--ipc", "5", "--alpha", "1", "--init", "random", "--iterations", "3", "--out", str(out), "--output", "json"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    report = json.loads(done.output[done.output.index("{"):])
    assert report["iterations"] == 3 and report["result"] == str(out / "result.pt")
    assert load_torch(out / "result.pt")["labels"].tolist() == sorted(list(range(10)) * 5)

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.output

    longer = [a if a != "3" else "4" for a in args] + ["--resume"]
    resumed = CliRunner().invoke(cli, longer)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output[resumed.output.index("{"):])["iterations"] == 4


def test_cli_missing_experts_exit_2_naming_the_command(tmp_path):
    done = CliRunner().invoke(cli, ["--device", "cpu", "distill", "-d", "digits", "--cache-dir", str(tmp_path / "c"),
                                    "--ipc", "5", "--alpha", "0.5", "--init", "random", "--out", str(tmp_path / "o")])
    assert done.exit_code == 2
    assert "autoselmatch experts --dataset digits" in done.output


def test_cli_alpha_zero_needs_no_experts(tmp_path):
    done = CliRunner().invoke(cli, ["--device", "cpu", "distill", "-d", "digits", "--cache-dir", str(tmp_path / "c"),
                                    "--ipc", "5", "--alpha", "0", "--init", "random", "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output
    assert not load_torch(tmp_path / "o" / "result.pt")["distill_mask"].any()


def test_cli_rejects_alpha_out_of_range():
    done = CliRunner().invoke(cli, ["distill", "-d", "digits", "--ipc", "5", "--alpha", "2"])
    assert done.exit_code == 2 and "--alpha" in done.output


# --------------------------------------------------------------------------------------------
# Files of the previous release (tests/fixtures/README.md says how they were made)
# --------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_SETTINGS = {  # the --set options of the command in tests/fixtures/README.md
    "device": "cpu",
    "experts.num_experts": 2,
    "experts.model": {"name": "convnet", "depth": 2, "width": 16, "norm": "batch"},
    "distill.max_start_epoch": 3,
    "distill.expert_epochs": 2,
    "distill.syn_steps": 5,
    "distill.batch_syn": 10,
    "distill.eval_every": 0,
    "distill.checkpoint_every": 1,
    "distill.init": "random",
}


def test_a_checkpoint_of_the_previous_release_resumes_as_a_fresh_run(digits, experts, expert_cache, tmp_path):
    """checkpoint-v0.1.0.pt (iteration 2 of 2) extended to 4 iterations equals a fresh 4-iteration run, up to
    float32 rounding: the fixture was written on another CPU, whose convolution kernels round otherwise (on
    one machine, resumes are bit for bit: test_resume_after_an_interruption_reproduces_the_uninterrupted_run)."""
    cfg = apply_overrides(load_preset("digits"), {**FIXTURE_SETTINGS, "cache_dir": str(expert_cache),
                                                  "distill.iterations": 4})
    shutil.copy(FIXTURES / "checkpoint-v0.1.0.pt", tmp_path / CHECKPOINT_FILE)
    resumed = selmatch(digits, cfg, ipc=2, alpha=0.5, experts=experts, checkpoint_dir=tmp_path, resume=True)
    whole = selmatch(digits, cfg, ipc=2, alpha=0.5, experts=experts)
    old = SyntheticSet.load(FIXTURES / "set-v0.1.0.pt")

    assert resumed.iterations == 4 and resumed.loss_history[:2] == pytest.approx(old.loss_history, rel=1e-4)
    assert resumed.loss_history == pytest.approx(whole.loss_history, rel=1e-4)
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=2e-3)  # pixels move ~0.03 std here
    assert resumed.eta == pytest.approx(whole.eta, rel=1e-5)
    assert load_torch(tmp_path / CHECKPOINT_FILE)["iteration"] == 4


# --------------------------------------------------------------------------------------------
# The activity record: whether a distillation did anything
# --------------------------------------------------------------------------------------------


def test_the_activity_record_has_every_key_at_the_evaluation_points(digits, experts, expert_cache, scores):
    from autoselmatch.synset import loss_ratio

    cfg = make_cfg(expert_cache, **{"distill.iterations": 6, "distill.eval_every": 4})
    evaluations = []

    def evaluator(images, labels, mask):
        evaluations.append(len(labels))
        return 0.5

    result = selmatch(digits, cfg, ipc=8, alpha=0.5, beta=0.1, scores=scores, experts=experts, evaluator=evaluator)
    assert [p["iteration"] for p in result.activity] == [0, 4, 6]  # the start, every eval_every, the end
    for point in result.activity:
        assert set(point) == {"iteration", "loss_ratio", "eta", "pixel_change"}  # no coverage unless asked
    start, four, end = result.activity
    assert start == {"iteration": 0, "loss_ratio": None, "eta": pytest.approx(cfg.distill.lr_teacher),
                     "pixel_change": 0.0}
    assert four["loss_ratio"] == pytest.approx(loss_ratio(result.loss_history[:4]))  # last 2 over first 2
    assert end["loss_ratio"] == pytest.approx(sum(result.loss_history[-3:]) / sum(result.loss_history[:3]))
    assert end["eta"] == pytest.approx(result.eta) and result.loss_ratio == end["loss_ratio"]
    initial = digits.normalize(digits.train_images[result.indices])  # pixels in std units
    moved = (result.images - initial).abs()[result.distill_mask]  # D_select rows excluded
    assert end["pixel_change"] == pytest.approx(float(moved.mean()), rel=1e-5) and end["pixel_change"] > 0
    assert 0 < four["pixel_change"]
    again = SyntheticSet.from_dict(result.to_dict())
    assert again.activity == result.activity


def test_alpha_zero_records_no_change(digits, scores, tmp_path):
    result = selmatch(digits, make_cfg(tmp_path / "empty-cache"), ipc=6, alpha=0.0, beta=0.3, scores=scores)
    assert result.activity == [{"iteration": 0, "loss_ratio": None, "eta": 0.01, "pixel_change": 0.0}]
    assert result.loss_ratio is None


def test_an_extended_run_keeps_its_activity_record_across_resume(digits, experts, expert_cache, scores, tmp_path):
    cfg = make_cfg(expert_cache, **{"distill.iterations": 4, "distill.eval_every": 2, "distill.checkpoint_every": 2})
    first = selmatch(digits, cfg, ipc=8, alpha=0.5, beta=0.1, scores=scores, experts=experts,
                     evaluator=lambda *a: 0.5, checkpoint_dir=tmp_path)
    longer = make_cfg(expert_cache, **{"distill.iterations": 6, "distill.eval_every": 2, "distill.checkpoint_every": 2,
                                       "distill.coverage_every": 0})
    second = selmatch(digits, longer, ipc=8, alpha=0.5, beta=0.1, scores=scores, experts=experts,
                      evaluator=lambda *a: 0.5, checkpoint_dir=tmp_path, resume=True)
    assert [p["iteration"] for p in first.activity] == [0, 2, 4]
    assert second.activity[:3] == first.activity and [p["iteration"] for p in second.activity] == [0, 2, 4, 6]


def test_coverage_every_records_easy_and_hard_coverage(digits, experts, expert_cache, scores, tmp_path):
    # experts are passed in; the private cache holds only the coverage reference network
    cfg = make_cfg(tmp_path / "cache", **{"distill.iterations": 4, "distill.coverage_every": 2, "evaluate.steps": 20})
    result = selmatch(digits, cfg, ipc=8, alpha=0.5, beta=0.1, scores=scores, experts=experts)
    assert [p["iteration"] for p in result.activity] == [0, 2, 4]
    for point in result.activity:
        assert {"coverage", "coverage_easy", "coverage_hard"} <= set(point)
        assert 0 <= point["coverage_easy"] <= 1 and 0 <= point["coverage_hard"] <= 1
    cached = list((tmp_path / "cache" / "coverage").glob("reference-digits-*.pt"))
    assert len(cached) == 1  # the reference network is trained once and cached

    from autoselmatch.coverage import distill_reference, set_coverage

    reference = distill_reference(digits, cfg, torch.device("cpu"))
    now = set_coverage(reference, result.images)
    assert result.activity[-1]["coverage_easy"] == pytest.approx(now.easy)
    assert result.activity[-1]["coverage_hard"] == pytest.approx(now.hard)


def test_cli_prints_the_activity_summary(experts, expert_cache, tmp_path):
    import re

    result = CliRunner().invoke(cli, ["--device", "cpu", "distill", "-d", "digits", "--cache-dir", str(expert_cache),
                                      *CLI_SET, "--ipc", "4", "--alpha", "1", "--init", "random", "--iterations", "3",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("activity: "))
    assert re.fullmatch(r"activity: loss ratio \d\.\d{3} \(end / start\), eta \S+, pixel change \d\.\d{4} std", line)
    saved = SyntheticSet.load(tmp_path / "run" / "result.pt")
    assert f"loss ratio {saved.loss_ratio:.3f}" in line and saved.activity[-1]["iteration"] == 3
