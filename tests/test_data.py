"""Dataset loaders on generated files in their real on-disk formats, and the validation split."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from autoselmatch.data import ImageDataset, load_dataset, read_idx, stratified_split
from autoselmatch.errors import DataError, InvalidArgument
from autoselmatch.registry import UnknownNameError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------- file writers


def write_cifar(root, name, n_train=60, n_test=20, classes=10):
    """CIFAR python pickles exactly as the official archives lay them out."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        label_key, names_key, meta = "labels", "label_names", "batches.meta"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files = ["test_batch"]
    else:
        folder = root / "cifar-100-python"
        label_key, names_key, meta = "fine_labels", "fine_label_names", "meta"
        train_files, test_files = ["train"], ["test"]
    folder.mkdir(parents=True)
    data = {}
    for split, files, n in (("train", train_files, n_train), ("test", test_files, n_test)):
        images = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % classes for i in range(n)]
        data[split] = (images, labels)
        for k, chunk in enumerate(np.array_split(np.arange(n), len(files))):
            entry = {"data": images[chunk], label_key: [labels[i] for i in chunk], "batch_label": f"batch {k}"}
            with open(folder / files[k], "wb") as f:
                pickle.dump(entry, f, protocol=2)
    with open(folder / meta, "wb") as f:
        pickle.dump({names_key: [f"class{c}" for c in range(classes)]}, f, protocol=2)
    return data


def write_idx(path, array, gz=True):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_png_tree(root, counts, size=(6, 6), mode="RGB"):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = RNG.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / cls / f"{i:03d}.png")


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_and_ranges(digits):
    assert digits.image_shape == (1, 8, 8)
    assert digits.train_images.dtype == torch.uint8
    assert digits.num_classes == 10
    assert len(digits.train_images) + len(digits.test_images) == 1797
    assert int(digits.train_images.max()) == 255
    x, y = digits.split("train")
    assert len(x) == len(digits.train_index) and set(y.tolist()) == set(range(10))


def test_normalize_roundtrip(digits):
    x, _ = digits.split("val")
    z = digits.normalize(x)
    assert z.dtype == torch.float32
    assert abs(float(digits.normalize(digits.train_images).mean())) < 1e-3
    assert torch.equal(digits.denormalize(z), x)


# ---------------------------------------------------------------------------- validation split


def test_split_is_stratified_disjoint_and_reproducible():
    labels = torch.arange(10).repeat_interleave(torch.tensor([100, 80, 60, 40, 20, 20, 40, 60, 80, 100]))
    train, val = stratified_split(labels, 0.05, seed=3)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    per_class = torch.bincount(labels[val], minlength=10).tolist()
    assert per_class == [5, 4, 3, 2, 1, 1, 2, 3, 4, 5]
    again, val_again = stratified_split(labels, 0.05, seed=3)
    assert torch.equal(val, val_again) and torch.equal(train, again)
    _, other = stratified_split(labels, 0.05, seed=4)
    assert not torch.equal(val, other)


def test_zero_fraction_gives_empty_validation():
    train, val = stratified_split(torch.tensor([0, 0, 1, 1]), 0.0, seed=0)
    assert len(val) == 0 and train.tolist() == [0, 1, 2, 3]


def test_val_fraction_out_of_range():
    with pytest.raises(InvalidArgument, match="val_fraction"):
        load_dataset("digits", val_fraction=0.7)


def test_unknown_dataset_lists_known():
    with pytest.raises(UnknownNameError, match="cifar100"):
        load_dataset("imagenet-1k")


# ---------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles(tmp_path, name, classes):
    data = write_cifar(tmp_path, name, n_train=200 if classes == 100 else 60, classes=classes)
    ds = load_dataset(name, root=tmp_path, val_fraction=0.1)
    images, labels = data["train"]
    assert ds.train_images.shape == (len(images), 3, 32, 32)
    # original training order is kept: row k of the file is row k of the tensor
    assert torch.equal(ds.train_images.reshape(len(images), -1), torch.from_numpy(images))
    assert ds.train_labels.tolist() == labels
    assert ds.classes[:2] == ("class0", "class1") and ds.num_classes == classes
    assert ds.test_images.shape[0] == len(data["test"][0])
    assert len(ds.val_index) > 0


def test_cifar_missing_points_to_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_incomplete_copy(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_refuses_malicious_pickle(tmp_path):
    write_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil()}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load global .*print"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------- idx (MNIST, Fashion-MNIST)


def write_mnist_like(folder, n_train=50, n_test=20, gz=True):
    folder.mkdir(parents=True)
    train = RNG.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    test = RNG.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", train, gz)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", test, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)
    return train, test


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    train, test = write_mnist_like(tmp_path / "MNIST" / "raw", gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.image_shape == (1, 28, 28)
    assert torch.equal(ds.train_images[:, 0], torch.from_numpy(train))
    assert torch.equal(ds.test_images[:, 0], torch.from_numpy(test))
    assert ds.train_labels.tolist() == [i % 10 for i in range(50)]


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_mnist_like(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.classes[0] == "T-shirt/top" and len(ds.train_images) == 50


def test_truncated_idx(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 28, 28), dtype=np.uint8), gz=False)
    blob = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(blob[:-10])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "x")


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package(tmp_path):
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.class_counts().tolist() == [5700] * 10


# ---------------------------------------------------------------------------- image folders


def test_image_folder(tmp_path):
    write_png_tree(tmp_path / "pets" / "train", {"cat": 6, "dog": 4})
    write_png_tree(tmp_path / "pets" / "test", {"cat": 2, "dog": 2})
    ds = load_dataset(f"folder:{tmp_path / 'pets'}", val_fraction=0.2)
    assert ds.classes == ("cat", "dog")
    assert ds.image_shape == (3, 6, 6)
    assert ds.train_labels.tolist() == [0] * 6 + [1] * 4
    first = np.array(Image.open(tmp_path / "pets" / "train" / "cat" / "000.png"))
    assert torch.equal(ds.train_images[0].permute(1, 2, 0), torch.from_numpy(first))
    assert torch.bincount(ds.train_labels[ds.val_index]).tolist() == [1, 1]


def test_image_folder_val_subfolder_and_resize(tmp_path):
    write_png_tree(tmp_path / "d" / "train", {"a": 2, "b": 2}, size=(10, 7))
    write_png_tree(tmp_path / "d" / "val", {"a": 1, "b": 1}, size=(5, 5))
    with pytest.raises(DataError, match="data.image_size=N"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", image_size=8)
    assert ds.image_shape == (3, 8, 8) and len(ds.test_images) == 2


# ---------------------------------------------------------------------------- data.image_size


def test_image_size_resizes_every_split_of_a_registered_dataset(digits):
    small = load_dataset("digits", val_fraction=0.1, split_seed=0, image_size=16)
    assert small.image_shape == (1, 16, 16) and small.test_images.shape[1:] == (1, 16, 16)
    assert small.train_images.dtype == torch.uint8 and small.image_size == 16 and digits.image_size is None
    assert len(small.train_images) == len(digits.train_images) and torch.equal(small.val_index, digits.val_index)
    # one antialiased bilinear resize of the uint8 images, rounded
    expected = torch.nn.functional.interpolate(digits.test_images[:5].float(), size=(16, 16), mode="bilinear",
                                               antialias=True).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(small.test_images[:5], expected)
    # normalisation constants describe the resized training pixels
    pixels = small.train_images.float() / 255
    assert small.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert small.std[0] == pytest.approx(pixels.std().item(), rel=1e-4)
    x, _ = small.split("train")
    assert abs(small.normalize(x).mean().item()) < 0.05
    same = load_dataset("digits", val_fraction=0.1, split_seed=0, image_size=8)  # its own size: nothing changes
    assert torch.equal(same.train_images, digits.train_images) and same.mean == digits.mean


def test_image_size_gives_other_cache_keys(digits, tmp_path):
    from autoselmatch.config import ScoreConfig, apply_overrides, load_preset
    from autoselmatch.experts import expert_cache_dir, expert_manifest
    from autoselmatch.scores import cache_path

    small = load_dataset("digits", val_fraction=0.1, split_seed=0, image_size=16)
    cfg = apply_overrides(load_preset("digits"), {"cache_dir": str(tmp_path), "data.val_fraction": 0.1})
    small_cfg = apply_overrides(cfg, {"data.image_size": 16})
    assert expert_manifest(small, small_cfg)["dataset"]["image_shape"] == [1, 16, 16]
    assert expert_cache_dir(small_cfg, expert_manifest(small, small_cfg)) != expert_cache_dir(
        cfg, expert_manifest(digits, cfg))
    scores = ScoreConfig(name="el2n")
    assert cache_path(small, scores, tmp_path, 0) != cache_path(digits, scores, tmp_path, 0)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_image_size_rejects_bad_values(value):
    from autoselmatch.config import DataConfig

    with pytest.raises(InvalidArgument, match=rf"^image_size must be an integer >= 1 .*got {value!r}$"):
        load_dataset("digits", image_size=value)
    with pytest.raises(InvalidArgument, match=rf"^data.image_size must be an integer >= 1 .*got {value!r}$"):
        DataConfig(image_size=value)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    write_png_tree(tmp_path / "mis" / "train", {"a": 2, "b": 2})
    write_png_tree(tmp_path / "mis" / "test", {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"only in train: \['b'\]"):
        load_dataset(f"folder:{tmp_path / 'mis'}")


# ---------------------------------------------------------------------------- Tiny ImageNet


def test_tinyimagenet_layout_and_cache(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    for w in wnids:
        write_png_tree(folder / "train" / w, {"images": 3}, size=(64, 64))
        (folder / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate([wnids[1], wnids[0], wnids[1]]):
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / f"val_{i}.JPEG", format="PNG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")

    ds = load_dataset("tinyimagenet", root=tmp_path, val_fraction=0.0)
    assert ds.image_shape == (3, 64, 64)
    assert ds.classes == tuple(wnids)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test_labels.tolist() == [1, 0, 1]
    assert (folder / "autoselmatch-tensors.pt").is_file()
    cached = load_dataset("tinyimagenet", root=tmp_path, val_fraction=0.0)
    assert torch.equal(cached.train_images, ds.train_images)


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(DataError, match="tinyimagenet not found"):
        load_dataset("tinyimagenet", root=tmp_path)


def test_to_device_keeps_everything(digits):
    moved = digits.to("cpu")
    assert isinstance(moved, ImageDataset) and torch.equal(moved.val_index, digits.val_index)
