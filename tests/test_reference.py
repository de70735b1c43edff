"""Sets saved by MTT / FTD / DATM: read in their exact layout, scored by this tool's protocol."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.experts import ZCAWhitening
from autoselmatch.reference import load_reference_set, reference_whitening

EVAL = ["--steps", "4", "--runs", "1", "--set", "evaluate.model.width=8", "--output", "json"]


def real_set(digits, per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` normalised training images per class: float (n, 1, 8, 8), int64 (n,)."""
    images, labels = digits.split("train")
    index = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(digits.num_classes)])
    return digits.normalize(images[index]), labels[index]


def save_like_mtt(folder: Path, images, labels, lr=None) -> Path:
    """What MTT's distill.py writes: torch.save of bare tensors, images_best.pt / labels_best.pt[/ lr_best.pt]."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images.clone(), folder / "images_best.pt")
    torch.save(labels.clone(), folder / "labels_best.pt")
    if lr is not None:
        torch.save(torch.tensor(lr), folder / "lr_best.pt")
    return folder


def evaluate(*args: str):
    return CliRunner().invoke(cli, ["--device", "cpu", "-q", "evaluate", *args])


def test_folder_with_hard_labels_is_scored_with_every_row_distilled(digits, tmp_path, cache_dir):
    images, labels = real_set(digits)
    folder = save_like_mtt(tmp_path / "run", images, labels, lr=0.02)
    result = evaluate("--from-reference", str(folder), "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert (record["n_images"], record["n_distill"], record["steps"]) == (20, 20, 4)
    assert record["reference"] == {"labels": "hard", "learned_lr": pytest.approx(0.02), "learned_lr_used": False,
                                   "zca": False}
    assert record["config"]["evaluate"]["lr"] == 0.1 and 0 <= record["mean"] <= 1


def test_files_with_soft_labels_and_learned_lr(digits, tmp_path, cache_dir):
    images, labels = real_set(digits)
    logits = 3 * torch.nn.functional.one_hot(labels, 10).float() + torch.randn(len(labels), 10)  # DATM learns logits
    torch.save(images, tmp_path / "images.pt")
    torch.save(logits, tmp_path / "labels.pt")
    torch.save(torch.nn.Parameter(torch.tensor(0.03)), tmp_path / "syn_lr.pt")  # DATM's lr is a parameter
    result = evaluate("--from-reference", str(tmp_path / "images.pt"), str(tmp_path / "labels.pt"),
                      str(tmp_path / "syn_lr.pt"), "--learned-lr", "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["reference"]["labels"] == "soft (10 classes)" and record["reference"]["learned_lr_used"]
    assert record["config"]["evaluate"]["lr"] == pytest.approx(0.03)
    loaded = load_reference_set([tmp_path / "images.pt", tmp_path / "labels.pt"])
    assert loaded.soft and torch.allclose(loaded.labels, torch.softmax(logits, 1))
    assert loaded.lr is None


def test_probability_rows_are_kept_and_integral_float_labels_are_hard(digits, tmp_path):
    images, labels = real_set(digits)
    probabilities = torch.softmax(torch.randn(len(labels), 10), 1)
    save_like_mtt(tmp_path / "a", images, probabilities)
    assert torch.equal(load_reference_set([tmp_path / "a"]).labels, probabilities)
    save_like_mtt(tmp_path / "b", images, labels.float())
    loaded = load_reference_set([tmp_path / "b"])
    assert not loaded.soft and torch.equal(loaded.labels, labels)


def test_zca_flag_must_match_how_the_images_were_saved(digits, tmp_path, cache_dir):
    images, labels = real_set(digits, per_class=5)
    whitened = ZCAWhitening.fit(digits.normalize(digits.split("train")[0]), 0.1)(images)
    plain, white = save_like_mtt(tmp_path / "plain", images, labels), save_like_mtt(tmp_path / "white", whitened, labels)
    ok = evaluate("--from-reference", str(white), "--zca", "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["reference"]["zca"] is True
    missing = evaluate("--from-reference", str(white), "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert missing.exit_code == 2 and "look ZCA-whitened" in missing.output and "pass --zca" in missing.output
    wrong = evaluate("--from-reference", str(plain), "--zca", "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert wrong.exit_code == 2 and "do not look ZCA-whitened" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1


def test_whitening_transform_is_the_experts_one(digits):
    images, _ = real_set(digits)
    train = digits.normalize(digits.split("train")[0])
    transform = reference_whitening(digits, ZCAWhitening.fit(train, 0.1)(images), zca=True, eps=0.1)
    assert torch.allclose(transform(images), ZCAWhitening.fit(train, 0.1)(images))
    assert reference_whitening(digits, images, zca=False, eps=0.1) is None


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_images_file_is_refused(digits, tmp_path, cache_dir):
    images, labels = real_set(digits)
    folder = save_like_mtt(tmp_path / "run", images, labels)
    torch.save([images, Evil(tmp_path / "PWNED")], folder / "images_best.pt")
    result = evaluate("--from-reference", str(folder), "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert result.exit_code != 0 and "refusing to load reference images" in result.output
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("labels, needle", [
    (torch.zeros(7, dtype=torch.long), "hold 7 rows for 20 images"),
    (torch.zeros(20, 3, 2), "must be integer (n,) or float soft labels (n, K)"),
    (torch.full((20, 10), float("nan")), "NaN or infinite"),
])
def test_bad_labels_are_one_line_errors(digits, tmp_path, labels, needle):
    images, _ = real_set(digits)
    save_like_mtt(tmp_path, images, labels)
    with pytest.raises(DataError) as exc_info:
        load_reference_set([tmp_path])
    assert needle in str(exc_info.value) and "\n" not in str(exc_info.value)


def test_usage_errors(digits, tmp_path, cache_dir):
    images, labels = real_set(digits)
    folder = save_like_mtt(tmp_path / "run", images, labels)
    with pytest.raises(InvalidArgument, match="must hold images_best.pt and labels_best.pt"):
        load_reference_set([tmp_path])
    no_lr = evaluate("--from-reference", str(folder), "--learned-lr", "-d", "digits", "--cache-dir", str(cache_dir))
    assert no_lr.exit_code == 2 and "no learned lr" in no_lr.output
    no_dataset = evaluate("--from-reference", str(folder))
    assert no_dataset.exit_code == 2 and "pass --dataset" in no_dataset.output
    flag_alone = evaluate(str(folder / "images_best.pt"), "--zca", "-d", "digits")
    assert flag_alone.exit_code == 2 and "need --from-reference" in flag_alone.output
    bare = evaluate(str(folder / "images_best.pt"), "-d", "digits", "--cache-dir", str(cache_dir))
    assert bare.exit_code != 0 and "use `autoselmatch evaluate --from-reference" in bare.output
    two_paths = evaluate(str(folder / "images_best.pt"), str(folder / "labels_best.pt"), "-d", "digits")
    assert two_paths.exit_code == 2 and "only with --from-reference" in two_paths.output
    small = save_like_mtt(tmp_path / "small", images[:, :, :4, :4], labels)
    wrong_shape = evaluate("--from-reference", str(small), "-d", "digits", "--cache-dir", str(cache_dir), *EVAL)
    assert wrong_shape.exit_code == 2 and "images must have shape (n, 1, 8, 8)" in wrong_shape.output
