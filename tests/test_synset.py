"""Tests of the set file (autoselmatch/synset.py): round trip, the pixel formula, old files, bad files."""

from pathlib import Path

import pytest
import torch

from autoselmatch.errors import DataError
from autoselmatch.synset import SyntheticSet, barely_distilled, from_pixels, loss_ratio, to_pixels

PREVIOUS = Path(__file__).parent / "fixtures" / "set-v0.1.0.pt"  # written by 0.1.0; see fixtures/README.md
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def a_set(n=6, channels=3) -> SyntheticSet:
    generator = torch.Generator().manual_seed(0)
    return SyntheticSet(
        images=torch.randn(n, channels, 4, 4, generator=generator),
        labels=torch.arange(n) % 3,
        distill_mask=torch.arange(n) % 2 == 0,
        dataset="cifar10",
        classes=("a", "b", "c"),
        mean=CIFAR_MEAN[:channels],
        std=CIFAR_STD[:channels],
        eta=0.0125,
        settings={"alpha": 0.5, "config": {"seed": 3}},
        loss_history=[0.9, 0.8],
        evals=[(2, 0.25)],
        indices=torch.arange(n) * 7,
        iterations=2,
        activity=[{"iteration": 2, "loss_ratio": 0.8 / 0.9, "eta": 0.0125, "pixel_change": 0.03,
                   "coverage": 0.5, "coverage_easy": 0.75, "coverage_hard": 0.25}],
    )


def one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# --------------------------------------------------------------------------------------------
# Round trip and format
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_every_field(tmp_path):
    s = a_set()
    again = SyntheticSet.load(s.save(tmp_path / "set.pt"))
    assert torch.equal(again.images, s.images) and torch.equal(again.labels, s.labels)
    assert torch.equal(again.distill_mask, s.distill_mask) and torch.equal(again.indices, s.indices)
    assert (again.dataset, again.classes, again.mean, again.std) == (s.dataset, s.classes, s.mean, s.std)
    assert (again.eta, again.settings, again.iterations) == (s.eta, s.settings, s.iterations)
    assert again.loss_history == s.loss_history and again.evals == s.evals and again.activity == s.activity
    assert torch.equal(torch.load(tmp_path / "set.pt", weights_only=True)["uint8"], s.to_pixels())


def test_saved_keys_are_those_the_previous_release_wrote(tmp_path):
    old = torch.load(PREVIOUS, weights_only=True)
    new = torch.load(a_set().save(tmp_path / "set.pt"), weights_only=True)
    assert set(new) == set(old) | {"activity"}  # the activity record is the one key added since
    assert all(type(new[k]) is type(old[k]) for k in old)


def test_the_previous_release_set_file_loads(digits):
    s = SyntheticSet.load(PREVIOUS)
    assert s.images.shape == (20, 1, 8, 8) and s.images.dtype == torch.float32
    assert s.labels.tolist() == [k for k in range(10) for _ in range(2)]
    assert s.distill_mask.tolist() == [False, True] * 10
    assert s.dataset == "digits" and s.classes == digits.classes and s.ipc == 2 and len(s) == 20
    assert s.mean == pytest.approx(digits.mean) and s.std == pytest.approx(digits.std)
    assert s.iterations == 2 and len(s.loss_history) == 2 and s.curves["loss"] == s.loss_history
    assert s.settings["alpha"] == 0.5 and s.settings["config"]["distill"]["syn_steps"] == 5
    assert 0 < s.eta < 1 and s.indices.shape == (20,)
    assert torch.equal(s.to_pixels(), torch.load(PREVIOUS, weights_only=True)["uint8"])
    real = ~s.distill_mask  # D_select rows are the real training images they started from
    assert torch.equal(s.to_pixels()[real], digits.train_images[s.indices[real]])
    assert s.activity == []  # written before the activity record existed
    assert s.loss_ratio == pytest.approx(s.loss_history[1] / s.loss_history[0])  # from the stored losses
    assert s.pixel_change is None and a_set().pixel_change == 0.03  # the last activity entry's, when recorded


@pytest.mark.parametrize("losses, expected", [
    ([], None),
    ([2.0], 1.0),
    ([4.0, 2.0], 0.5),
    ([4.0, 4.0, 9.0, 1.0, 1.0], 0.25),  # w = 2: the middle loss is in neither window
    ([2.0] * 10 + [5.0] * 20 + [1.0] * 10, 0.5),  # w = 10 at most
])
def test_loss_ratio_compares_the_last_and_first_windows(losses, expected):
    assert loss_ratio(losses) == (None if expected is None else pytest.approx(expected))


def test_loss_ratio_of_a_set_prefers_its_activity_record():
    s = a_set()
    assert s.loss_ratio == pytest.approx(0.8 / 0.9)
    s.activity = [{"iteration": 2, "loss_ratio": 0.5, "eta": 0.01, "pixel_change": 0.0}]
    assert s.loss_ratio == 0.5


def test_a_bad_activity_record_is_refused(tmp_path):
    blob = a_set().to_dict()
    torch.save({**blob, "activity": [{"eta": 0.1}]}, tmp_path / "bad.pt")
    with pytest.raises(DataError) as exc_info:
        SyntheticSet.load(tmp_path / "bad.pt")
    one_line(exc_info, "bad.pt", "'activity' must be a list of dicts with an 'iteration' each")


def test_a_pixels_only_file_loads_without_mean_and_std(tmp_path):
    pixels = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    torch.save({"pixels": pixels, "labels": torch.tensor([0, 1, 0, 1], dtype=torch.int32)}, tmp_path / "p.pt")
    s = SyntheticSet.load(tmp_path / "p.pt")
    assert torch.equal(s.to_pixels(), pixels) and s.labels.dtype == torch.int64
    assert not s.distill_mask.any() and s.dataset is None and s.eta is None  # optional keys
    with pytest.raises(DataError, match="no mean/std"):
        s.normalized()
    with_constants = SyntheticSet(pixels, s.labels, s.distill_mask, mean=(0.5,), std=(0.25,))
    assert torch.allclose(with_constants.normalized(), (pixels.float() / 255 - 0.5) / 0.25)


def test_curves_of_a_trial_artifact_fill_the_history():
    blob = {"images": torch.zeros(2, 1, 2, 2), "labels": torch.tensor([0, 1]),
            "curves": '{"loss": [0.5, 0.4], "evals": [[2, 0.75]]}'}
    s = SyntheticSet.from_dict(blob)
    assert s.loss_history == [0.5, 0.4] and s.evals == [(2, 0.75)]


# --------------------------------------------------------------------------------------------
# The pixel formula
# --------------------------------------------------------------------------------------------


def test_to_pixels_inverts_from_pixels_on_every_value():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    images = from_pixels(pixels, CIFAR_MEAN, CIFAR_STD)
    assert images.dtype == torch.float32
    assert torch.allclose(images[:, 0], (pixels[:, 0].float() / 255 - CIFAR_MEAN[0]) / CIFAR_STD[0])
    assert torch.equal(to_pixels(images, CIFAR_MEAN, CIFAR_STD), pixels)


def test_from_pixels_inverts_to_pixels_up_to_half_a_grey_level():
    images = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3 - 1.5
    inside = ((images * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
              .clamp(0, 1) - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    back = from_pixels(to_pixels(images, CIFAR_MEAN, CIFAR_STD), CIFAR_MEAN, CIFAR_STD)
    step = 0.5 / 255 / min(CIFAR_STD) + 1e-5
    assert float((back - inside).abs().max()) <= step  # values outside [0, 255] clip to the range


def test_the_dataset_uses_the_same_formula(digits):
    x = digits.train_images[:10]
    assert torch.equal(digits.normalize(x), from_pixels(x, digits.mean, digits.std))
    assert torch.equal(digits.denormalize(digits.normalize(x)), x)


# --------------------------------------------------------------------------------------------
# Bad files: one-line refusals
# --------------------------------------------------------------------------------------------


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError) as exc_info:
        SyntheticSet.load(tmp_path / "nope.pt")
    one_line(exc_info, "nope.pt does not exist")


@pytest.mark.parametrize("content", [b"", b"not a torch file", None], ids=["empty", "text", "truncated"])
def test_a_corrupt_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(PREVIOUS.read_bytes()[:2000] if content is None else content)
    with pytest.raises(DataError) as exc_info:
        SyntheticSet.load(path)
    one_line(exc_info, "set file", "bad.pt")


@pytest.mark.parametrize("change, needle", [
    (lambda b: [1, 2], "must hold a dict"),
    (lambda b: {k: v for k, v in b.items() if k != "labels"}, "no 'labels'"),
    (lambda b: {k: v for k, v in b.items() if k not in ("images", "uint8")}, "'images'"),
    (lambda b: {**b, "distill_mask": b["distill_mask"].long()}, "distill_mask must be bool"),
    (lambda b: {**b, "labels": b["labels"][:5]}, "20 images but 5 labels"),
    (lambda b: {**b, "labels": b["labels"].float()}, "labels must be integers"),
    (lambda b: {**b, "labels": b["labels"] + 10}, "labels must be in [0, 9]"),
    (lambda b: {**b, "images": b["images"][:, 0]}, "images must be float or uint8 (n, C, H, W)"),
    (lambda b: {**b, "mean": [0.1, 0.2, 0.3]}, "mean/std have 3/1 entries for 1 channels"),
    (lambda b: {**b, "dataset": 3}, "'dataset' must be a string"),
    (lambda b: {**b, "settings": "{oops"}, "settings is not valid JSON"),
], ids=["list", "no-labels", "no-images", "int-mask", "lengths", "float-labels", "label-range", "3d-images",
        "mean-length", "dataset-type", "settings-json"])
def test_inconsistent_content_is_refused(tmp_path, change, needle):
    torch.save(change(torch.load(PREVIOUS, weights_only=True)), tmp_path / "bad.pt")
    with pytest.raises(DataError) as exc_info:
        SyntheticSet.load(tmp_path / "bad.pt", what="result file")
    one_line(exc_info, "result file", needle)


@pytest.mark.parametrize("ratio, pixels, barely", [
    (0.98, 0.64, False),  # a partial SRe2L set: its real rows keep the loss up while its distilled ones move
    (0.63, 0.03, True),  # the learned eta lowered the loss; the pixels stayed
    (0.9, None, True), (0.7, None, False),  # sets saved before the pixel change was recorded: the ratio decides
    (None, 0.0, False),  # not distilled
])
def test_barely_distilled_reads_the_pixel_change_and_the_loss_ratio_only_without_it(ratio, pixels, barely):
    assert barely_distilled(ratio, pixels, moved=0.05, ratio_above=0.8) is barely
