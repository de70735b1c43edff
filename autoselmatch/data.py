"""Datasets as in-memory uint8 tensors, with a seeded, stratified validation split.

Every dataset, whatever its on-disk format, becomes one :class:`ImageDataset`:
the full training set in its original order (so published score files line
up), the test set, class names, normalisation constants, and the indices of a
validation split carved per class from the training set. Selection,
distillation and expert training only ever see ``train_index``; trial scores
use ``val_index``; ``test_*`` is for the final report.

    ds = load_dataset("digits", val_fraction=0.1, split_seed=0)
    x, y = ds.split("train")            # uint8 (N, C, H, W), int64 (N,)
    xf = ds.normalize(x)                # float32, (x / 255 - mean) / std

Registered names: ``cifar10``, ``cifar100``, ``tinyimagenet``, ``mnist``,
``fashion-mnist``, ``digits``, plus ``folder:PATH`` for any ImageFolder-style
tree with ``train/`` and ``test/`` (or ``val/``) sub-folders.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import torch

from .errors import DataError, InvalidArgument
from .registry import Registry
from .synset import from_pixels, to_pixels

if TYPE_CHECKING:
    from .config import DataConfig

DEFAULT_DATA_ROOT = Path(os.environ.get("AUTOSELMATCH_DATA", "~/.cache/autoselmatch/data")).expanduser()
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class RawData:
    """What a loader returns before the validation split: uint8 (N, C, H, W) tensors."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None = None  # None: computed from the training images
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ImageDataset:
    """A dataset held as tensors, with its validation split.

    Attributes:
        name: Registry name (``cifar100``, ``folder:/data/pets``, ...).
        train_images: uint8 (N, C, H, W), the whole training set in original order.
        train_labels: int64 (N,).
        test_images: uint8 (M, C, H, W).
        test_labels: int64 (M,).
        classes: Class names; label ``k`` is ``classes[k]``.
        mean, std: Per-channel normalisation constants in [0, 1] pixel units.
        train_index: int64 (N - V,) ascending indices into the training set
            that are *not* validation samples: the pool for selection,
            distillation and experts.
        val_index: int64 (V,) ascending indices of the validation samples.
        image_size: The side every image was resized to at load (``data.image_size``);
            ``None``: the dataset's own size.
        flip: Whether a horizontal mirror keeps the class (``data.flip``): the simple
            augmentation flips only then.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_index: torch.Tensor
    val_index: torch.Tensor
    image_size: int | None = None
    flip: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def split(self, which: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (n, C, H, W) and int64 labels (n,) of ``train``, ``val`` or ``test``."""
        if which == "train":
            return self.train_images[self.train_index], self.train_labels[self.train_index]
        if which == "val":
            return self.train_images[self.val_index], self.train_labels[self.val_index]
        if which == "test":
            return self.test_images, self.test_labels
        raise InvalidArgument(f"split must be one of train, val, test, got {which!r}")

    def class_counts(self) -> torch.Tensor:
        """int64 (num_classes,): samples per class in the selectable training pool."""
        return torch.bincount(self.train_labels[self.train_index], minlength=self.num_classes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, C, H, W) -> float32 (n, C, H, W) in normalised space (:func:`autoselmatch.synset.from_pixels`)."""
        return from_pixels(images, self.mean, self.std)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """float (n, C, H, W) normalised -> uint8 pixels, rounded and clipped (:func:`autoselmatch.synset.to_pixels`)."""
        return to_pixels(images, self.mean, self.std)

    def to(self, device: torch.device | str) -> "ImageDataset":
        """A copy whose tensors live on ``device``."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
            train_index=self.train_index.to(device),
            val_index=self.val_index.to(device),
        )


DATASETS: Registry[Callable[..., RawData]] = Registry("dataset")


def dataset_names() -> list[str]:
    """Registered dataset names plus the ``folder:PATH`` form."""
    return DATASETS.names() + ["folder:PATH"]


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    image_size: int | None = None,
    flip: bool = True,
    device: torch.device | str = "cpu",
) -> ImageDataset:
    """Load a dataset by name and carve its validation split.

    Args:
        name: A registered name or ``folder:PATH``.
        root: Where datasets live (downloaded to or read from); default
            ``~/.cache/autoselmatch/data`` or ``$AUTOSELMATCH_DATA``.
        download: Fetch the official files when they are missing.
        val_fraction: Fraction of each class held out for validation, in [0, 0.5].
        split_seed: Seed of the validation split (independent of the run seed).
        image_size: Resize every image (train and test) to this square side once, at
            load (see :func:`resize_raw`); ``None`` keeps the dataset's size.
        flip: Whether a horizontal mirror keeps the class (the simple augmentation flips only then).
        device: Where the tensors are placed.
    """
    if not 0.0 <= val_fraction <= 0.5:
        raise InvalidArgument(f"val_fraction must be in [0, 0.5], got {val_fraction}")
    check_image_size("image_size", image_size)
    root = Path(root).expanduser() if root is not None else DEFAULT_DATA_ROOT
    if name.startswith("folder:"):
        raw = load_image_folder(Path(name[len("folder:"):]).expanduser(), image_size=image_size)
    else:
        raw = DATASETS.get(name)(root=root, download=download)
    _check_raw(name, raw)
    if image_size is not None:
        raw = resize_raw(raw, image_size)
    mean, std = raw.mean, raw.std
    if mean is None or std is None:
        pixels = raw.train_images.float().div_(255.0)
        mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
        std = tuple(pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    train_index, val_index = stratified_split(raw.train_labels, val_fraction, split_seed)
    return ImageDataset(
        name=name,
        train_images=raw.train_images,
        train_labels=raw.train_labels,
        test_images=raw.test_images,
        test_labels=raw.test_labels,
        classes=tuple(raw.classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        train_index=train_index,
        val_index=val_index,
        image_size=image_size,
        flip=flip,
    ).to(device)


def load_configured(data: "DataConfig", *, device: torch.device | str = "cpu") -> ImageDataset:
    """:func:`load_dataset` with the settings of a :class:`~autoselmatch.config.DataConfig`."""
    return load_dataset(data.name, root=data.root, download=data.download, val_fraction=data.val_fraction,
                        split_seed=data.split_seed, image_size=data.image_size, flip=data.flip,
                        device=device)


def check_image_size(name: str, image_size: object) -> None:
    """Refuse an image side that is not a positive integer (``None``, the native size, is fine)."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise InvalidArgument(f"{name} must be an integer >= 1 (or unset for the dataset's own size), "
                              f"got {image_size!r}")


def resize_images(images: torch.Tensor, size: int, *, chunk: int = 4096) -> torch.Tensor:
    """uint8 (n, C, H, W) -> uint8 (n, C, size, size): antialiased bilinear, rounded (in chunks of ``chunk`` images)."""
    if images.shape[-2:] == (size, size):
        return images
    parts = [
        torch.nn.functional.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        for part in torch.split(images, chunk)
    ]
    return torch.cat(parts) if parts else images.new_zeros(0, images.shape[1], size, size)


def resize_raw(raw: RawData, size: int) -> RawData:
    """``raw`` with train and test images resized to ``size`` x ``size`` (:func:`resize_images`).

    Normalisation constants a loader supplies describe its own pixels; once the
    images are resized they are dropped, so :func:`load_dataset` computes them
    from the resized training images (the mean barely moves, the std shrinks
    as resizing smooths). Images already of that size come back unchanged.
    """
    if raw.train_images.shape[-2:] == (size, size) and raw.test_images.shape[-2:] == (size, size):
        return raw
    return replace(raw, train_images=resize_images(raw.train_images, size),
                   test_images=resize_images(raw.test_images, size), mean=None, std=None)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), taking ``round(fraction * n_c)`` of each class.

    At least one sample per class goes to validation when ``fraction > 0`` and
    the class has two or more samples. Both outputs are sorted ascending.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    val_parts = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        k = int(round(fraction * len(members)))
        if fraction > 0 and len(members) > 1:
            k = min(max(k, 1), len(members) - 1)
        order = torch.randperm(len(members), generator=generator)
        val_parts.append(members[order[:k]])
    val = torch.sort(torch.cat(val_parts)).values if val_parts else torch.zeros(0, dtype=torch.long)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).flatten(), val


def _check_raw(name: str, raw: RawData) -> None:
    for split, images, labels in (
        ("train", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"{name}: {split} images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{name}: {split} has {len(images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(raw.classes)):
            raise DataError(f"{name}: {split} labels must be in [0, {len(raw.classes) - 1}]")
    if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
        raise DataError(
            f"{name}: train images are {tuple(raw.train_images.shape[1:])} but test images are "
            f"{tuple(raw.test_images.shape[1:])}; pass --set data.image_size=N to resize them all"
        )


# --------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits (no download)
# --------------------------------------------------------------------------------------------


@DATASETS.register("digits")
def _digits(*, root: Path, download: bool) -> RawData:
    """1,797 grey 8x8 digits; a fixed stratified 20 % (seed 0) is the test set.

    Reads scikit-learn's bundled ``digits.csv.gz`` (what ``load_digits`` reads)
    without importing scikit-learn, which costs a second or more per process.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise DataError("the digits dataset ships with scikit-learn; install it with `pip install scikit-learn`")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")  # (1797, 65)
    images = torch.from_numpy(np.rint(table[:, :-1].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    train, test = stratified_split(labels, 0.2, seed=0)
    return RawData(
        images[train], labels[train], images[test], labels[test], tuple(str(d) for d in range(10))
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the official python pickles, read with a restricted unpickler
# --------------------------------------------------------------------------------------------

CIFAR = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    ),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        mean=(0.5071, 0.4866, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts, lists, strings and NumPy arrays, and nothing else.

    CIFAR's files are pickles; a plain ``pickle.load`` of a file from a user
    path could run arbitrary code. Only the globals NumPy needs to rebuild an
    array are allowed.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as exc:  # corrupt file, wrong format, refused global
        raise DataError(f"cannot read CIFAR file {path}: {exc}") from None


def _cifar(name: str, root: Path, download: bool) -> RawData:
    spec = CIFAR[name]
    folder = root / spec["folder"]
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(spec["url"], str(root), md5=spec["md5"])
    if not folder.is_dir():
        raise DataError(f"{name} not found at {folder}; pass --download or point --data-root at a folder holding {spec['folder']}/")

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for file in files:
            try:
                entry = _load_cifar_pickle(folder / file)
            except FileNotFoundError:
                raise DataError(f"{name}: missing file {folder / file}; the copy is incomplete, re-download with --download") from None
            data = np.asarray(entry["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{name}: {folder / file} holds data of shape {data.shape}, expected (n, 3072)")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            labels.append(torch.as_tensor(entry[spec["label_key"]], dtype=torch.long))
        return torch.cat(images), torch.cat(labels)

    train_x, train_y = read(spec["train"])
    test_x, test_y = read(spec["test"])
    try:
        classes = tuple(_load_cifar_pickle(folder / spec["meta"])[spec["names_key"]])
    except FileNotFoundError:
        raise DataError(f"{name}: missing file {folder / spec['meta']}") from None
    return RawData(train_x, train_y, test_x, test_y, classes, spec["mean"], spec["std"])


@DATASETS.register("cifar10")
def _cifar10(*, root: Path, download: bool) -> RawData:
    return _cifar("cifar10", root, download)


@DATASETS.register("cifar100")
def _cifar100(*, root: Path, download: bool) -> RawData:
    return _cifar("cifar100", root, download)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: idx files (optionally gzipped)
# --------------------------------------------------------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) of unsigned bytes into a NumPy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from None
    if len(blob) < 4:
        raise DataError(f"idx file {path} is truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", blob[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (magic {blob[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    payload = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise DataError(f"idx file {path} holds {payload.size} bytes, its header says {shape}")
    return payload.reshape(shape)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _idx_dataset(name: str, folders: list[Path], classes: tuple[str, ...], mean: float, std: float) -> RawData:
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(folders, stem)
        if path is None:
            where = ", ".join(str(f) for f in folders)
            raise DataError(f"{name}: {stem}[.gz] not found in {where}; pass --download or point --data-root at a copy")
        arrays[key] = read_idx(path)
    to_images = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731  (n, 28, 28) -> (n, 1, 28, 28)
    to_labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return RawData(
        to_images(arrays["train_images"]),
        to_labels(arrays["train_labels"]),
        to_images(arrays["test_images"]),
        to_labels(arrays["test_labels"]),
        classes,
        (mean,),
        (std,),
    )


def _torchvision_download(cls_name: str, root: Path) -> None:
    import torchvision.datasets

    getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)


@DATASETS.register("mnist")
def _mnist(*, root: Path, download: bool) -> RawData:
    folders = [root / "MNIST" / "raw", root / "mnist"]
    if download and _find_idx(folders, IDX_FILES["train_images"]) is None:
        _torchvision_download("MNIST", root)
    return _idx_dataset("mnist", folders, tuple(str(d) for d in range(10)), 0.1307, 0.3081)


@DATASETS.register("fashion-mnist")
def _fashion_mnist(*, root: Path, download: bool) -> RawData:
    """Reads root/FashionMNIST/raw, root/fashion-mnist, then Debian's /usr/share/datasets/fashion-mnist."""
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FASHION_MNIST]
    if download and _find_idx(folders, IDX_FILES["train_images"]) is None:
        _torchvision_download("FashionMNIST", root)
    return _idx_dataset("fashion-mnist", folders, FASHION_CLASSES, 0.2860, 0.3530)


# --------------------------------------------------------------------------------------------
# Image folders: Tiny ImageNet and user data
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_images(paths: list[Path], image_size: int | None) -> torch.Tensor:
    """Decode image files into uint8 (n, 3, H, W); all must share a size unless ``image_size`` is set."""
    from PIL import Image

    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if image_size is not None:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        if out and array.shape != out[0].shape:
            raise DataError(
                f"image {path} is {array.shape[1]}x{array.shape[0]} but earlier images are "
                f"{out[0].shape[1]}x{out[0].shape[0]}; pass --set data.image_size=N to resize them all"
            )
        out.append(array)
    if not out:
        return torch.zeros(0, 3, image_size or 1, image_size or 1, dtype=torch.uint8)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    """ImageFolder order: class folders sorted, files found recursively and sorted."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    return {
        c: sorted(p for p in (split_dir / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        for c in classes
    }


def load_image_folder(path: Path, *, image_size: int | None = None) -> RawData:
    """``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``val/``) as a dataset."""
    if not path.is_dir():
        raise DataError(f"folder dataset {path} does not exist or is not a directory")
    train_dir = path / "train"
    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"folder dataset {path} needs train/ and test/ (or val/) sub-folders")
    train_files = {c: f for c, f in _class_files(train_dir).items() if f}
    test_files = {c: f for c, f in _class_files(test_dir).items() if f}
    if not train_files:
        raise DataError(f"folder dataset {path}: train/ has no class folders with images")
    if len(train_files) < 2:
        raise DataError(f"folder dataset {path}: train/ has one class ({next(iter(train_files))}); "
                        f"distillation and difficulty scores need at least two class folders")
    if set(train_files) != set(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise DataError(
            f"folder dataset {path}: train/ and {test_dir.name}/ classes differ "
            f"(only in train: {only_train or '-'}; only in {test_dir.name}: {only_test or '-'})"
        )
    classes = tuple(sorted(train_files))

    def read(files: dict[str, list[Path]]) -> tuple[torch.Tensor, torch.Tensor]:
        paths = [p for c in classes for p in files[c]]
        labels = torch.tensor([k for k, c in enumerate(classes) for _ in files[c]], dtype=torch.long)
        return _read_images(paths, image_size), labels

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    return RawData(train_x, train_y, test_x, test_y, classes)


TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)


@DATASETS.register("tinyimagenet")
def _tinyimagenet(*, root: Path, download: bool) -> RawData:
    """Tiny ImageNet-200: train in ImageFolder order; the labelled val/ split is the test set.

    Decoding 110,000 JPEGs takes a minute or two, so the decoded tensors are
    cached next to the data as ``autoselmatch-tensors.pt``.
    """
    from .fileio import load_torch, save_torch

    folder = root / "tiny-imagenet-200"
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
    if not (folder / "train").is_dir() or not (folder / "val" / "val_annotations.txt").is_file():
        raise DataError(f"tinyimagenet not found at {folder} (train/ and val/val_annotations.txt); pass --download")
    cache = folder / "autoselmatch-tensors.pt"
    if cache.is_file():
        t = load_torch(cache, what="decoded-tensor cache", remedy="delete it to decode again")
        return RawData(t["train_images"], t["train_labels"], t["test_images"], t["test_labels"],
                       tuple(t["classes"]), TINY_MEAN, TINY_STD)
    train_files = {c: f for c, f in _class_files(folder / "train").items() if f}
    classes = tuple(sorted(train_files))
    index = {c: k for k, c in enumerate(classes)}
    train_paths = [p for c in classes for p in train_files[c]]
    train_y = torch.tensor([index[c] for c in classes for _ in train_files[c]], dtype=torch.long)
    test_paths, test_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"tinyimagenet: val annotation names unknown class {parts[1]!r}")
        test_paths.append(folder / "val" / "images" / parts[0])
        test_labels.append(index[parts[1]])
    raw = RawData(
        _read_images(train_paths, None),
        train_y,
        _read_images(test_paths, None),
        torch.tensor(test_labels, dtype=torch.long),
        classes,
        TINY_MEAN,
        TINY_STD,
    )
    save_torch(
        dict(train_images=raw.train_images, train_labels=raw.train_labels, test_images=raw.test_images,
             test_labels=raw.test_labels, classes=list(classes)),
        cache,
    )
    return raw


__all__ = [
    "DATASETS",
    "DEFAULT_DATA_ROOT",
    "ImageDataset",
    "RawData",
    "dataset_names",
    "load_configured",
    "load_dataset",
    "load_image_folder",
    "read_idx",
    "resize_images",
    "resize_raw",
    "stratified_split",
]
