"""Expert storage size and the memory cost of loading trajectories.

(a) ``sizes``: bytes per expert for CIFAR-100 ConvNet-BN (depth 3, width 128,
    32x32, 100 classes) in autoselmatch's format vs the reference MTT layout
    (``buffer.py``: per expert a list of per-epoch lists of parameter tensors,
    ``torch.save``'d ten experts per ``replay_buffer_<n>.pt``). Computed, not
    trained: the parameter count comes from the real model, our file size from
    the .npy header plus the raw rows, and the reference file size from a
    linear fit to ``torch.save`` of small buffers with the real tensor shapes.

(b) ``rss``: peak resident memory (``VmHWM``) of fresh processes that open the
    cached experts of a run and then (i) do nothing more (baseline), (ii) draw
    100 (start, target) pairs with ``ExpertStore.sample`` as distillation does,
    (iii) load every expert fully into memory, (iv) ``torch.load`` the same
    experts converted to the reference layout (one file, as MTT loads it).
    ``--synthetic PRESET --synthetic-experts K`` first writes K random experts
    with the preset's geometry (e.g. cifar100: 83 x 504,420 floats each) and
    measures those: memory depends on the shapes only, not on the values.

(c) ``import``: peak RSS of ``autoselmatch experts --from-mtt`` (:func:`import_mtt_experts`)
    converting synthetic MTT buffers (``replay_buffer_<n>.pt``, written as
    buffer.py does, CIFAR-100 ConvNet-BN geometry, random values) in a fresh
    process, against ``torch.load`` of one buffer file as the reference code
    does (the same process kind, nothing else done). The dataset is a
    stand-in with CIFAR-100's shapes (the import reads only its shapes and
    key), so no download is needed.

    python bench/experts_memory.py sizes
    autoselmatch --device cpu experts --dataset fashion-mnist --cache-dir /tmp/asm-bench/cache
    python bench/experts_memory.py rss --dir /tmp/asm-bench/cache/experts/fashion-mnist-<hash>
    python bench/experts_memory.py rss --synthetic cifar100 --synthetic-experts 3 --dir /tmp/asm-bench/synthetic
    python bench/experts_memory.py import --dir /tmp/asm-bench/import --files 3 --experts-per-file 10 --epochs 16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CIFAR100_CONVNET = dict(channels=3, num_classes=100, image_size=32, depth=3, width=128, norm="batch")
REFERENCE_EXPERTS_PER_FILE = 10  # buffer.py --save_interval
REFERENCE_DEFAULT_EPOCHS = 50  # buffer.py --train_epochs
PAPER_EPOCHS = 80 + 2  # T+ + M for CIFAR-100 (SelMatch Table 5)
PAPER_EXPERTS = 100
PROBE_SAMPLES = 100
GEOMETRY = {  # dataset -> (channels, side, classes), for synthetic experts
    "digits": (1, 8, 10),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "tinyimagenet": (3, 64, 200),
}


# --------------------------------------------------------------------------------------------
# (a) sizes
# --------------------------------------------------------------------------------------------


def cifar100_parameter_shapes() -> list[torch.Size]:
    from autoselmatch.models import build_model

    return [p.shape for p in build_model("convnet", **CIFAR100_CONVNET).parameters()]


def our_bytes_per_expert(num_params: int, epochs: int) -> int:
    """.npy header + (epochs + 1) float32 rows of ``num_params``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (epochs + 1, num_params)})
    return len(header.getvalue()) + (epochs + 1) * num_params * 4


def reference_buffer_bytes(shapes: list[torch.Size], experts: int, snapshots: int) -> int:
    """Bytes of ``torch.save`` of the reference buffer: experts x snapshots x [one tensor per parameter]."""
    buffer = [[[torch.zeros(s) for s in shapes] for _ in range(snapshots)] for _ in range(experts)]
    blob = io.BytesIO()
    torch.save(buffer, blob)
    return len(blob.getvalue())


def reference_size_model(shapes: list[torch.Size]) -> tuple[float, float, float]:
    """Fit bytes = a + b * experts + c * experts * snapshots on three small saves (exact for a linear format)."""
    s11 = reference_buffer_bytes(shapes, 1, 1)
    s12 = reference_buffer_bytes(shapes, 1, 2)
    s21 = reference_buffer_bytes(shapes, 2, 1)
    c = s12 - s11
    b = s21 - s11 - c
    a = s11 - b - c
    return a, b, c


def sizes() -> dict:
    shapes = cifar100_parameter_shapes()
    num_params = sum(int(np.prod(s)) for s in shapes)
    a, b, c = reference_size_model(shapes)
    check_snapshots = 6
    predicted = a + b + c * check_snapshots
    measured = reference_buffer_bytes(shapes, 1, check_snapshots)

    def reference(experts: int, epochs: int) -> float:
        return a + b * experts + c * experts * (epochs + 1)

    rows = []
    for label, epochs in (("T+ + M = 82 epochs", PAPER_EPOCHS), ("reference default 50 epochs", REFERENCE_DEFAULT_EPOCHS)):
        ours = our_bytes_per_expert(num_params, epochs)
        file_bytes = reference(REFERENCE_EXPERTS_PER_FILE, epochs)
        rows.append({
            "epochs": label,
            "snapshots": epochs + 1,
            "ours_bytes_per_expert": ours,
            "reference_bytes_per_expert": file_bytes / REFERENCE_EXPERTS_PER_FILE,
            "reference_bytes_per_file_of_10": file_bytes,
            "ours_bytes_100_experts": ours * PAPER_EXPERTS,
            "reference_bytes_100_experts": reference(REFERENCE_EXPERTS_PER_FILE, epochs) * PAPER_EXPERTS / REFERENCE_EXPERTS_PER_FILE,
            "ours_bytes_to_read_one_pair": 2 * num_params * 4,
            "reference_bytes_to_read_one_pair": file_bytes,
        })
    return {
        "model": "convnet depth 3 width 128 batchnorm, 3x32x32, 100 classes",
        "num_params": num_params,
        "num_tensors": len(shapes),
        "reference_fit": {"a": a, "b": b, "c_per_snapshot": c, "fit_check_snapshots": check_snapshots,
                          "predicted": predicted, "measured": measured},
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# (b) peak RSS in fresh processes
# --------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """VmHWM of this process (peak resident set), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def probe(mode: str, directory: Path, reference_file: Path | None) -> dict:
    """Run in a fresh interpreter: open the store, do ``mode``, report the peak RSS."""
    from autoselmatch.experts import ExpertStore

    store = ExpertStore(directory)
    held: list = []
    seconds_per_pair = None
    if mode == "pair":
        generator = torch.Generator().manual_seed(0)
        max_start = store.num_epochs - 2
        began = time.perf_counter()
        for _ in range(PROBE_SAMPLES):
            held = list(store.sample(generator, max_start_epoch=max_start, expert_epochs=2))
        seconds_per_pair = (time.perf_counter() - began) / PROBE_SAMPLES
    elif mode == "all":
        held = [torch.from_numpy(np.load(store.path(i))) for i in range(store.num_experts)]
    elif mode == "reference":
        held = torch.load(reference_file, weights_only=True)
    bytes_held = sum(t.numel() * 4 for t in held) if mode in ("pair", "all") else None
    return {"mode": mode, "peak_rss": peak_rss_bytes(), "bytes_held": bytes_held, "seconds_per_pair": seconds_per_pair,
            "num_experts": store.num_experts,
            "num_epochs": store.num_epochs, "num_params": store.num_params}


def write_reference_layout(directory: Path, out: Path) -> None:
    """The store's experts as MTT's buffer: [expert][epoch] -> list of parameter tensors, one torch.save file."""
    from autoselmatch.experts import ExpertStore
    from autoselmatch.models import ModelSpec

    store = ExpertStore(directory)
    key = store.manifest["key"]
    channels, size, _ = key["dataset"]["image_shape"]
    model = ModelSpec(key["model"]["name"], key["model"]["options"]).build(
        channels=channels, num_classes=key["dataset"]["num_classes"], image_size=size)
    numels = [p.numel() for p in model.parameters()]
    shapes = [p.shape for p in model.parameters()]
    buffer = []
    for i in range(store.num_experts):
        trajectory = torch.from_numpy(np.load(store.path(i)))
        buffer.append([[t.view(s).clone() for t, s in zip(torch.split(row, numels), shapes)] for row in trajectory])
        del trajectory
    torch.save(buffer, out)


def write_synthetic(directory: Path, preset: str, num_experts: int) -> None:
    """``num_experts`` random experts with the geometry of ``preset`` (model, epochs, image shape) and a manifest.

    The RSS probe only depends on the shapes, not on the values, so this
    stands in for a run that is too long for the machine at hand.
    """
    from autoselmatch.config import load_preset
    from autoselmatch.experts import FORMAT, expert_epochs_for
    from autoselmatch.fileio import save_json, sha256_file

    cfg = load_preset(preset)
    channels, size, num_classes = GEOMETRY[cfg.data.name]
    model = cfg.experts.model.build(channels=channels, num_classes=num_classes, image_size=size)
    num_params = sum(p.numel() for p in model.parameters())
    epochs = expert_epochs_for(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    experts = {}
    for i in range(num_experts):
        path = directory / f"expert_{i:03d}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(epochs + 1, num_params))
        for e in range(epochs + 1):
            array[e] = generator.standard_normal(num_params, dtype=np.float32)
        array.flush()
        del array
        experts[str(i)] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), "test_acc": 0.0}
    key = {"dataset": {"name": f"synthetic-{cfg.data.name}", "image_shape": [channels, size, size],
                       "num_classes": num_classes},
           "model": {"name": cfg.experts.model.name, "options": dict(cfg.experts.model.options)}, "zca": None}
    save_json({"format": FORMAT, "key": key, "num_params": num_params, "num_epochs": epochs, "experts": experts},
              directory / "manifest.json")


def rss(directory: Path, synthetic: str | None, synthetic_experts: int) -> dict:
    if synthetic:
        write_synthetic(directory, synthetic, synthetic_experts)
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        reference_file = Path(tmp) / "replay_buffer_0.pt"
        subprocess.run([sys.executable, __file__, "_reference", "--dir", str(directory), "--out", str(reference_file)],
                       check=True)
        results = {}
        for mode in ("baseline", "pair", "all", "reference"):
            out = subprocess.run([sys.executable, __file__, "_probe", mode, "--dir", str(directory),
                                  "--reference", str(reference_file)], check=True, capture_output=True, text=True)
            results[mode] = json.loads(out.stdout)
        results["reference_file_bytes"] = reference_file.stat().st_size
    expert_bytes = sum(p.stat().st_size for p in directory.glob("expert_*.npy"))
    base = results["baseline"]["peak_rss"]
    return {
        "directory": str(directory),
        "expert_files_bytes": expert_bytes,
        **{f"{m}_peak_rss": results[m]["peak_rss"] for m in ("baseline", "pair", "all", "reference")},
        **{f"{m}_over_baseline": results[m]["peak_rss"] - base for m in ("pair", "all", "reference")},
        "reference_file_bytes": results["reference_file_bytes"],
        "num_experts": results["baseline"]["num_experts"],
        "num_epochs": results["baseline"]["num_epochs"],
        "num_params": results["baseline"]["num_params"],
        "pair_samples": PROBE_SAMPLES,
        "seconds_per_pair_warm_cache": results["pair"]["seconds_per_pair"],
    }


# --------------------------------------------------------------------------------------------
# (c) peak RSS of importing MTT buffers
# --------------------------------------------------------------------------------------------


def stand_in_cifar100():
    """An ImageDataset with CIFAR-100's shapes and constants (200 random training images, 100 classes)."""
    from autoselmatch.data import ImageDataset

    generator = torch.Generator().manual_seed(0)
    channels, side, classes = GEOMETRY["cifar100"]
    images = torch.randint(0, 256, (200, channels, side, side), dtype=torch.uint8, generator=generator)
    labels = torch.arange(200) % classes
    return ImageDataset(name="synthetic-cifar100", train_images=images, train_labels=labels, test_images=images[:10],
                        test_labels=labels[:10], classes=tuple(str(c) for c in range(classes)),
                        mean=(0.5071, 0.4866, 0.4409), std=(0.2673, 0.2564, 0.2762),
                        train_index=torch.arange(200), val_index=torch.zeros(0, dtype=torch.long))


def import_config(cache: Path, epochs: int):
    from autoselmatch.config import apply_overrides, load_preset

    return apply_overrides(load_preset("cifar100"), {"cache_dir": str(cache), "device": "cpu", "experts.epochs": epochs,
                                                      "data.val_fraction": 0.0})


def write_mtt_buffers(folder: Path, files: int, experts_per_file: int, epochs: int) -> None:
    """Random experts in buffer.py's layout: per file a list of experts, each E + 1 lists of parameter tensors."""
    shapes = cifar100_parameter_shapes()
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for n in range(files):
        trajectories = [[[torch.randn(s, generator=generator) for s in shapes] for _ in range(epochs + 1)]
                        for _ in range(experts_per_file)]
        torch.save(trajectories, folder / f"replay_buffer_{n}.pt")
        del trajectories


def import_probe(mode: str, folder: Path, cache: Path, epochs: int) -> dict:
    """Fresh interpreter: ``import`` the buffers, ``reference``-load one file, or nothing (``baseline``)."""
    from autoselmatch.experts import import_mtt_experts

    ds = stand_in_cifar100()
    began = time.perf_counter()
    store = None
    if mode == "import":
        store = import_mtt_experts(folder, ds, import_config(cache, epochs))
    elif mode == "reference":
        held = torch.load(folder / "replay_buffer_0.pt", weights_only=True)  # as MTT's distill.py
        del held
    return {"mode": mode, "peak_rss": peak_rss_bytes(), "seconds": time.perf_counter() - began,
            "num_experts": None if store is None else store.num_experts}


def import_rss(directory: Path, files: int, experts_per_file: int, epochs: int) -> dict:
    folder = directory / "buffers" / "CIFAR100_NO_ZCA" / "ConvNetBN"
    cache = directory / "cache"
    if not (folder / f"replay_buffer_{files - 1}.pt").is_file():
        write_mtt_buffers(folder, files, experts_per_file, epochs)
    results = {}
    for mode in ("baseline", "reference", "import"):
        out = subprocess.run([sys.executable, __file__, "_import_probe", mode, "--dir", str(folder), "--cache",
                              str(cache), "--epochs", str(epochs)], check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout)
    buffer_bytes = sorted(p.stat().st_size for p in folder.glob("replay_buffer_*.pt"))
    base = results["baseline"]["peak_rss"]
    return {
        "buffer_files": len(buffer_bytes),
        "buffer_file_bytes": buffer_bytes[-1],
        "buffer_total_bytes": sum(buffer_bytes),
        "experts": results["import"]["num_experts"],
        "epochs": epochs,
        "num_params": sum(int(np.prod(s)) for s in cifar100_parameter_shapes()),
        "expert_bytes": our_bytes_per_expert(sum(int(np.prod(s)) for s in cifar100_parameter_shapes()), epochs),
        "baseline_peak_rss": base,
        "reference_load_one_file_over_baseline": results["reference"]["peak_rss"] - base,
        "import_all_files_over_baseline": results["import"]["peak_rss"] - base,
        "import_seconds": results["import"]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sizes", help="(a) bytes per expert, CIFAR-100 ConvNet-BN (computed)")
    rss_parser = sub.add_parser("rss", help="(b) peak RSS of loading one pair vs all experts")
    rss_parser.add_argument("--dir", type=Path, required=True, help="An expert cache folder (or where to write synthetic ones).")
    rss_parser.add_argument("--synthetic", default=None, metavar="PRESET",
                            help="Write random experts with PRESET's geometry (model, epochs) into --dir first.")
    rss_parser.add_argument("--synthetic-experts", type=int, default=5, metavar="K",
                            help="How many synthetic experts (default 5).")
    import_parser = sub.add_parser("import", help="(c) peak RSS of importing MTT buffers (CIFAR-100 geometry)")
    import_parser.add_argument("--dir", type=Path, required=True, help="Where the buffers and the cache go.")
    import_parser.add_argument("--files", type=int, default=3, help="replay_buffer_<n>.pt files (default 3).")
    import_parser.add_argument("--experts-per-file", type=int, default=10, help="Experts per file (default 10).")
    import_parser.add_argument("--epochs", type=int, default=16, help="Epochs per expert (default 16).")
    import_probe_parser = sub.add_parser("_import_probe")
    import_probe_parser.add_argument("mode", choices=["baseline", "reference", "import"])
    import_probe_parser.add_argument("--dir", type=Path, required=True)
    import_probe_parser.add_argument("--cache", type=Path, required=True)
    import_probe_parser.add_argument("--epochs", type=int, required=True)
    probe_parser = sub.add_parser("_probe")
    probe_parser.add_argument("mode", choices=["baseline", "pair", "all", "reference"])
    probe_parser.add_argument("--dir", type=Path, required=True)
    probe_parser.add_argument("--reference", type=Path, required=True)
    reference_parser = sub.add_parser("_reference")
    reference_parser.add_argument("--dir", type=Path, required=True)
    reference_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    if args.command == "sizes":
        print(json.dumps(sizes(), indent=2))
    elif args.command == "rss":
        print(json.dumps(rss(args.dir, args.synthetic, args.synthetic_experts), indent=2))
    elif args.command == "import":
        print(json.dumps(import_rss(args.dir, args.files, args.experts_per_file, args.epochs), indent=2))
    elif args.command == "_import_probe":
        print(json.dumps(import_probe(args.mode, args.dir, args.cache, args.epochs)))
    elif args.command == "_probe":
        print(json.dumps(probe(args.mode, args.dir, args.reference)))
    elif args.command == "_reference":
        write_reference_layout(args.dir, args.out)


if __name__ == "__main__":
    os.environ.setdefault("AUTOSELMATCH_NO_PROGRESS", "1")
    main()
