"""Does a base method move the set somewhere useful? Test accuracy of the initial set vs the distilled set.

Digits, ``ipc`` random real images per class (``distill.init = random``), alpha = 1, ``iterations`` of
``method`` with the ``digits`` preset's other settings; both sets are scored by the method's own protocol
(:func:`autoselmatch.distill.evaluate_distilled`: hard labels for mtt and dsa, distillation from the
teacher for sre2l), 3 networks each on the test split. Prints one JSON line.

    python bench/method_sanity.py dsa 1 20
    python bench/method_sanity.py sre2l 10 200
"""

import json
import sys
import time

from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.data import load_dataset
from autoselmatch.distill import evaluate_distilled, initial_set, selmatch


def main() -> None:
    method, ipc, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cache = sys.argv[4] if len(sys.argv) > 4 else "studies/cache"
    cfg = apply_overrides(load_preset("digits"), {
        "device": "cpu", "distill.method": method, "distill.init": "random", "distill.iterations": iterations,
        "distill.eval_every": 0, "distill.checkpoint_every": 0, "cache_dir": cache, "evaluate.runs": 3})
    ds = load_dataset("digits")
    start = initial_set(ds, cfg, ipc=ipc, alpha=1.0, beta=0.0)
    began = time.time()
    result = selmatch(ds, cfg, ipc=ipc, alpha=1.0)
    seconds = time.time() - began
    before = evaluate_distilled(ds, start.images, start.labels, cfg, distill_mask=start.distill_mask, split="test")
    after = evaluate_distilled(ds, result.images, result.labels, cfg, distill_mask=result.distill_mask, split="test")
    print(json.dumps({"method": method, "ipc": ipc, "iterations": iterations, "seconds": round(seconds, 1),
                      "init_test": [round(before.mean, 4), round(before.std, 4)],
                      "distilled_test": [round(after.mean, 4), round(after.std, 4)],
                      "loss_first_last": [round(result.loss_history[0], 4), round(result.loss_history[-1], 4)]}))


if __name__ == "__main__":
    main()
