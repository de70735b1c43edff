"""distill.precision: bf16 autocast agrees with fp32, TF32 is scoped and refused where it cannot run,
and the precision is a setting of the run (result, checkpoint, tune's alpha study)."""

import re

import pytest
import torch
import torch.nn.functional as F

from autoselmatch.choices import DISTILL_PRECISIONS, MEMORY_MODES
from autoselmatch.config import DistillConfig, RunConfig, apply_overrides, load_preset
from autoselmatch.distill import (CHECKPOINT_FILE, TrajectoryMatcher, batch_stats_only, check_precision, selmatch,
                                  student_precision)
from autoselmatch.errors import InvalidArgument
from autoselmatch.models import FlatModel, build_model

# The tiny ConvNet of the agreement test: 60 RGB 16x16 images, 10 classes, N = 10 student steps of b = 30.
STEPS, BATCH = 10, 30


def matcher_output(memory: str, precision: str, norm: str = "batch"):
    torch.manual_seed(0)
    net = build_model("convnet", channels=3, num_classes=10, image_size=16, depth=2, width=16, norm=norm)
    flat = FlatModel(batch_stats_only(net))
    images = torch.randn(60, 3, 16, 16)
    labels = torch.arange(60) % 10
    start = flat.flatten()
    target = start + 0.01 * torch.randn_like(start)
    matcher = TrajectoryMatcher(flat, labels, syn_steps=STEPS, batch_syn=BATCH, memory=memory, precision=precision)
    return matcher(images, torch.tensor(0.01), start, target, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_bf16_gradients_agree_with_fp32(memory):
    """Measured on the development CPU: cosine 0.9992 (batch norm) in every mode, dL/deta within 0.2 %."""
    fp32, bf16 = matcher_output(memory, "fp32"), matcher_output(memory, "bf16")

    assert bf16.grad_images.dtype == bf16.grad_lr.dtype == torch.float32  # the meta-gradient stays fp32
    assert not torch.equal(bf16.grad_images, fp32.grad_images)  # the student really ran in bf16
    cosine = F.cosine_similarity(bf16.grad_images.flatten().double(), fp32.grad_images.flatten().double(), dim=0)
    assert cosine > 0.99
    assert abs(float(bf16.grad_lr) - float(fp32.grad_lr)) < 0.02 * abs(float(fp32.grad_lr))
    assert abs(float(bf16.loss) - float(fp32.loss)) < 1e-3 * float(fp32.loss)


def test_bf16_agrees_with_instance_norm_too():
    fp32, bf16 = matcher_output("exact", "fp32", norm="instance"), matcher_output("exact", "bf16", norm="instance")
    cosine = F.cosine_similarity(bf16.grad_images.flatten().double(), fp32.grad_images.flatten().double(), dim=0)
    assert cosine > 0.99


def test_tf32_is_refused_on_cpu_in_one_line():
    flat = FlatModel(build_model("convnet", channels=1, num_classes=2, image_size=8, width=4, depth=1))
    message = ("distill.precision 'tf32' needs a CUDA GPU of compute capability 8.0 or later (TF32 tensor cores); "
               "device cpu cannot run it; use --set distill.precision=fp32 (or bf16)")
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
        TrajectoryMatcher(flat, torch.tensor([0, 1]), syn_steps=1, batch_syn=2, precision="tf32")
    with pytest.raises(InvalidArgument, match="^distill.precision must be one of fp32, tf32, bf16, got 'fp16'$"):
        TrajectoryMatcher(flat, torch.tensor([0, 1]), syn_steps=1, batch_syn=2, precision="fp16")
    check_precision("bf16", torch.device("cpu"))  # bf16 runs on any CPU (emulated where it has no bf16 instructions)
    with pytest.raises(InvalidArgument, match="^distill.precision 'bf16' runs on a CPU or a CUDA GPU"):
        check_precision("bf16", torch.device("mps"))


def test_config_checks_the_precision_against_the_same_names():
    assert [DistillConfig(precision=p).precision for p in DISTILL_PRECISIONS] == ["fp32", "tf32", "bf16"]
    assert DistillConfig().precision == "fp32"
    with pytest.raises(InvalidArgument, match="distill.precision must be one of fp32, tf32, bf16, got 'half'"):
        DistillConfig(precision="half")


def _tf32_flags() -> tuple:
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        return backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision
    return backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32


def test_the_tf32_switch_is_scoped_to_the_student_steps():
    """On a CUDA device the scope turns TF32 on (tf32) or off (fp32, bf16) and restores the process's flags."""
    before = _tf32_flags()
    cuda = torch.device("cuda")  # the flags are process-wide settings: no GPU is needed to set them
    with student_precision("tf32", cuda):
        on = _tf32_flags()
    assert _tf32_flags() == before
    with student_precision("fp32", cuda):
        off = _tf32_flags()
    assert _tf32_flags() == before
    assert on in (("tf32", "tf32"), (True, True)) and off in (("ieee", "ieee"), (False, False))
    with pytest.raises(RuntimeError, match="boom"), student_precision("tf32", cuda):
        raise RuntimeError("boom")
    assert _tf32_flags() == before
    with student_precision("fp32", torch.device("cpu")):  # nothing to switch on a CPU
        assert _tf32_flags() == before


def test_the_cli_offers_the_precisions_config_accepts():
    import click

    from autoselmatch.cli import cli

    ctx = click.Context(cli)
    param = next(p for p in cli.get_command(ctx, "distill").params if "--precision" in p.opts)
    assert tuple(param.type.choices) == DISTILL_PRECISIONS


# --------------------------------------------------------------------------------------------
# The precision as a setting of a run
# --------------------------------------------------------------------------------------------

TINY = {
    "device": "cpu",
    "experts.num_experts": 1,
    "experts.epochs": 3,
    "experts.model": {"name": "convnet", "depth": 2, "width": 8, "norm": "batch"},
    "distill.max_start_epoch": 1,
    "distill.expert_epochs": 2,
    "distill.syn_steps": 3,
    "distill.batch_syn": 10,
    "distill.iterations": 2,
    "distill.eval_every": 0,
    "distill.checkpoint_every": 1,
    "distill.init": "random",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("precision-cache")


def tiny_cfg(cache, **overrides):
    return apply_overrides(load_preset("digits"), {**TINY, "cache_dir": str(cache), **overrides})


@pytest.fixture(scope="module")
def experts(digits, cache):
    from autoselmatch.experts import train_experts

    return train_experts(digits, tiny_cfg(cache))


def test_the_precision_is_stored_and_a_checkpoint_of_another_precision_is_not_resumed(digits, experts, cache,
                                                                                        tmp_path):
    cfg = tiny_cfg(cache, **{"distill.precision": "bf16"})
    result = selmatch(digits, cfg, ipc=2, alpha=0.5, experts=experts, checkpoint_dir=tmp_path)
    assert result.settings["precision"] == "bf16"
    assert result.settings["config"]["distill"]["precision"] == "bf16"
    assert (tmp_path / CHECKPOINT_FILE).is_file()

    fp32 = tiny_cfg(cache, **{"distill.iterations": 3})
    with pytest.raises(InvalidArgument, match="was made with other settings"):
        selmatch(digits, fp32, ipc=2, alpha=0.5, experts=experts, checkpoint_dir=tmp_path, resume=True)
    resumed = selmatch(digits, tiny_cfg(cache, **{"distill.precision": "bf16", "distill.iterations": 3}), ipc=2,
                       alpha=0.5, experts=experts, checkpoint_dir=tmp_path, resume=True)
    assert resumed.iterations == 3 and resumed.loss_history[:2] == result.loss_history


def test_an_alpha_study_made_before_the_setting_existed_still_resumes():
    """fp32 is what the tool did before distill.precision existed: an alpha study's settings without it are
    not a change; any other precision is."""
    from autoselmatch.records import ALPHA
    from autoselmatch.tune._stage import default_settings, stage_settings
    from autoselmatch.tune._storage import settings_diff

    cfg = RunConfig()
    now = stage_settings(cfg, ALPHA, 10)
    assert now["distill"]["precision"] == "fp32"
    old = {**now, "distill": {k: v for k, v in now["distill"].items() if k != "precision"}}
    assert settings_diff(old, now, default_settings(ALPHA, 10)) == []
    bf16 = stage_settings(apply_overrides(cfg, {"distill.precision": "bf16"}), ALPHA, 10)
    assert settings_diff(old, bf16, default_settings(ALPHA, 10)) == [("distill.precision", None, "bf16")]
