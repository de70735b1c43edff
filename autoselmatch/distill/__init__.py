"""The distillation core: trajectory matching with SelMatch's selection init and partial update.

A synthetic set D_syn = D_select ∪ D_distill is trained so that a student
network, started from an expert's parameters theta*_t and trained for N
steps on D_syn, lands near the expert's parameters M epochs later (MTT,
Cazenavette et al. 2022, eq. 1 of SelMatch):

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

Only the D_distill rows and the student learning rate eta receive updates;
the D_select rows are frozen real images, but every student minibatch is
drawn from the whole D_syn (SelMatch eq. 2).

    result = selmatch(ds, cfg, ipc=10, alpha=0.5, beta=0.2)   # window init, experts from the cache
    result.save("studies/distill/digits/result.pt")

Lower level: :func:`distill` runs the loop on any initial set,
:class:`TrajectoryMatcher` computes one iteration's loss and gradients with
one of three memory modes:

- ``exact``: one autograd graph through all N steps (what the reference
  code does); memory grows with N.
- ``checkpoint``: exact gradients with memory per segment: a graph-free
  pass keeps theta at segment boundaries, then each segment is recomputed
  with its graph, last to first, and its vector-Jacobian product taken.
  Batches and augmentation draws are fixed before the first pass, so a
  recomputed segment sees exactly the same inputs.
- ``tesla``: the constant-memory approximation of Cui et al. (ICML 2023).
  With theta_N = theta_0 - eta * sum_i g_i and v = dL/dtheta_N, it uses
  dL/dX_i ~ -eta * d(v . g_i)/dX_i and dL/deta ~ -v . sum_i g_i: it drops
  the dependence of theta_{i+1..N} (and so of every later g_j) on batch i
  and on eta, i.e. the Hessian-vector terms that ``exact`` backpropagates
  through. A graph-free pass gives theta_N and v; a replay accumulates the
  per-step contributions, holding one step's graph at a time. (TESLA's
  soft-label part does not apply: labels are fixed hard labels here.)

Student minibatches have a constant size b, cut from consecutive random
permutations of the rows (the reference code's last chunk of a permutation
may be smaller). Run control: all randomness comes from one CPU generator
(plus per-step re-seeded DSA generators), and a checkpoint holds the
:class:`RunState` (D_distill, eta, both optimizers' momentum and that
generator's state), so ``resume`` continues bit for bit on CPU. The result
is a :class:`~autoselmatch.synset.SyntheticSet`. Experts trained with ZCA whitening are
refused (synthetic sets live in the dataset's normalised space).

``torch.compile`` is not offered: the inner gradient needs a double
backward (``create_graph=True``), which compiled autograd graphs do not
support.

Base methods (``distill.method``, :data:`METHODS`): ``mtt`` is the trajectory matching above;
``dsa`` is gradient matching with Siamese DSA (Zhao & Bilen 2021; ``_gradmatch``), which needs no
experts. The initial set and the partial update are the same for both.

Modules: ``_methods`` (the base-method registry), ``_gradmatch`` (DSA gradient matching),
``_trajectory`` (one iteration: :class:`TrajectoryMatcher`), ``_run`` (the run state, its
checkpoint and the :func:`distill` loop), ``_student`` (the student network and the experts'
checks), ``_selmatch`` (the initial set and :func:`selmatch`).
"""

from ._run import (
    CHECKPOINT_FILE,
    RESULT_FILE,
    Checkpoint,
    DistillResult,
    DistillStep,
    RunState,
    distill,
    evaluate_distilled,
    pixel_bounds,
    quick_evaluator,
    saved_set_config,
)
from ._methods import METHODS, Method, Objective, expert_settings, method_key, method_revision, method_settings
from ._selmatch import InitialSet, initial_set, selmatch
from ._student import ExpertSource, batch_stats_only, check_experts, dsa_strategies, student_network
from ._trajectory import MatchOutput, StudentPlan, TrajectoryMatcher, check_precision, student_precision

__all__ = [
    "CHECKPOINT_FILE",
    "RESULT_FILE",
    "Checkpoint",
    "DistillResult",
    "DistillStep",
    "ExpertSource",
    "InitialSet",
    "METHODS",
    "MatchOutput",
    "Method",
    "Objective",
    "RunState",
    "StudentPlan",
    "TrajectoryMatcher",
    "batch_stats_only",
    "check_experts",
    "check_precision",
    "dsa_strategies",
    "distill",
    "evaluate_distilled",
    "expert_settings",
    "initial_set",
    "method_key",
    "method_revision",
    "method_settings",
    "pixel_bounds",
    "quick_evaluator",
    "saved_set_config",
    "selmatch",
    "student_network",
    "student_precision",
]
