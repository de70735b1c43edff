"""Several processes on one stage: this process is worker 0, ``workers - 1`` spawned ones join it.

Each spawned worker rebuilds the objectives from the plan's factory, opens
the same study and runs the same search; the storage (a journal file or a
server database) and the controller's claims keep them off each other's
points. A worker trains on GPU ``rank % count`` when several GPUs exist.

    outcome = run_parallel(job, controller)   # job: a StageJob with job.plan.workers > 1
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal

import optuna

from ..config import RunConfig
from ..errors import AutoSelMatchError
from ..runtime import LOG
from ..storage import open_storage
from ._controller import SearchController, StageOutcome
from ._stage import StageJob


def run_parallel(job: StageJob, controller: SearchController) -> StageOutcome:
    """Run ``controller`` here while ``job.plan.workers - 1`` spawned processes run the same search."""
    context = multiprocessing.get_context("spawn")
    levels = (LOG.getEffectiveLevel(), optuna.logging.get_verbosity())
    children = [context.Process(target=_worker_main, args=(job, rank, levels), name=f"tune-worker-{rank}")
                for rank in range(1, job.plan.workers)]
    for child in children:
        child.start()
    try:
        outcome = controller.run()
    except BaseException:
        _stop_children(children)
        raise
    for child in children:
        child.join()
        if child.exitcode != 0:
            LOG.warning("%s: worker %s exited with code %s", job.name, child.name, child.exitcode)
    return controller.outcome(outcome.ran, outcome.stopped)


def _stop_children(children: list[multiprocessing.process.BaseProcess]) -> None:
    """Let the workers stop (a Ctrl-C reaches them too; each marks its running trial failed),
    interrupt those still running, and make sure they are gone."""
    for child in children:
        child.join(timeout=10)
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGINT)
    for child in children:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
            child.join()


def _worker_main(job: StageJob, rank: int, levels: tuple[int, int]) -> None:
    """Entry point of a spawned worker: rebuild the objective, open the study, run the search.

    ``levels``: the parent's log level and Optuna verbosity.
    """
    from ..runtime import setup_logging

    setup_logging(0)
    LOG.setLevel(levels[0])
    optuna.logging.set_verbosity(levels[1])
    cfg = _worker_config(job.plan.cfg, rank)
    try:
        objs = job.plan.factory(cfg)
        storage = open_storage(job.plan.spec, heartbeat_interval=cfg.tune.heartbeat_interval,
                               grace_period=cfg.tune.grace_period)
        study = job.open(storage)
        job.controller(study, objs, job.context(cfg, study)).run()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except AutoSelMatchError as exc:
        LOG.error("worker %d: %s", rank, exc)
        raise SystemExit(exc.exit_code) from None


def _worker_config(cfg: RunConfig, rank: int) -> RunConfig:
    """Worker ``rank`` trains on GPU ``rank % count`` when the run uses CUDA and several GPUs exist."""
    import torch

    if not cfg.device.startswith(("cuda", "auto")) or not torch.cuda.is_available() or ":" in cfg.device:
        return cfg
    return dataclasses.replace(cfg, device=f"cuda:{rank % torch.cuda.device_count()}")


__all__ = ["run_parallel"]
