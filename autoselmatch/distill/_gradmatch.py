"""Gradient matching with differentiable Siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

For each class c, a network's gradient on the synthetic images of class c
should equal its gradient on a batch of real images of class c, both batches
augmented with the same DSA draw (one strategy, one seed: the "Siamese"
augmentation). The distance is the DSA paper's, summed over the network's
weight tensors: per output channel (row of the weight reshaped to
(out, -1)), 1 - cosine between the real and the synthetic gradient; bias and
normalisation vectors (1-D parameters) do not count.

One iteration (:class:`GradientMatcher`) starts a fresh network and
alternates ``gm_outer_loop`` image updates with ``gm_inner_loop`` epochs of
training that network on the current synthetic set (with DSA), as the DC/DSA
reference code does; SelMatch's reproduction (App. B.2) uses 10 and 10,
pixel lr 0.1. BatchNorm uses batch statistics (as the MTT student does).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import dsa
from ..config import DistillConfig
from ..data import ImageDataset


def layer_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """The DSA paper's distance of one parameter's gradients: sum over output channels of 1 - cosine.

    Args:
        real, syn: Gradients of one parameter, same shape (out, ...); 1-D ones (biases, norms) give 0.
    """
    if real.dim() == 1:
        return real.new_zeros(())
    real, syn = real.flatten(1), syn.flatten(1)  # (out, in * kh * kw)
    cosine = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + 1e-6)
    return (1 - cosine).sum()


def match_distance(real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of :func:`layer_distance` over a network's parameters (two gradient lists in parameter order)."""
    return torch.stack([layer_distance(r, s) for r, s in zip(real, syn)]).sum()


def class_gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool) -> list[torch.Tensor]:
    """d CE(net(x), y) / d parameters, one tensor per parameter (``create_graph``: differentiable w.r.t. x)."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = F.cross_entropy(net(x), y)
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def class_match_loss(net: nn.Module, real: torch.Tensor, syn: torch.Tensor, label: int, *, seed: int | None,
                     strategy: str, generator: torch.Generator) -> torch.Tensor:
    """Gradient-matching loss of one class: real (b, C, H, W) vs syn (k, C, H, W), differentiable w.r.t. syn.

    Both batches are augmented with ``strategy`` from ``generator`` re-seeded with ``seed`` (the
    Siamese draw; ``strategy`` "" means no augmentation).
    """
    if strategy:
        real = dsa(real, generator=generator.manual_seed(seed), strategy=strategy)
        syn = dsa(syn, generator=generator.manual_seed(seed), strategy=strategy)
    g_real = [g.detach() for g in class_gradients(net, real, _full(real, label), create_graph=False)]
    g_syn = class_gradients(net, syn, _full(syn, label), create_graph=True)
    return match_distance(g_real, g_syn)


def _full(x: torch.Tensor, label: int) -> torch.Tensor:
    return torch.full((len(x),), label, dtype=torch.long, device=x.device)


class GradientMatcher:
    """One DSA iteration's matching losses and the training of its network between image updates.

    Args:
        ds: The dataset; real batches come from ``ds.train_index`` only.
        labels: int64 (n,) hard labels of the synthetic rows (every class present).
        dc: The ``distill`` settings (``gm_*``).
        strategies: DSA strategies drawn from per class and update; empty for no augmentation.
    """

    def __init__(self, ds: ImageDataset, labels: torch.Tensor, dc: DistillConfig, strategies: Sequence[str]) -> None:
        self.ds = ds
        self.labels = labels
        self.dc = dc
        self.strategies = tuple(strategies)
        train = ds.train_index
        self.pools = [train[ds.train_labels[train] == c].cpu() for c in range(ds.num_classes)]  # (n_c,) each
        self.rows = [torch.nonzero(labels == c).flatten() for c in range(ds.num_classes)]  # synthetic rows per class
        self._aug_generator = torch.Generator(device=labels.device)

    def _draw(self, generator: torch.Generator) -> tuple[int, str]:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        pick = int(torch.randint(max(len(self.strategies), 1), (), generator=generator))
        return seed, self.strategies[pick] if self.strategies else ""

    def loss_and_grad(self, net: nn.Module, images: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over classes of the class matching losses, and the gradient of their sum w.r.t. ``images``.

        The pixels step along the gradient of the summed loss, as in the DC/DSA reference code, so
        ``distill.gm_lr_img`` means the same at any number of classes (the mean's gradient would be
        num_classes times smaller); the returned loss is the per-class mean, comparable across datasets.
        Per class: ``gm_batch_real`` real images (fewer if the class has fewer), the class's synthetic
        rows (D_select and D_distill alike), one Siamese DSA draw; all draws from ``generator`` (CPU).
        Each class's loss is differentiated on its own (the classes share no synthetic rows), so memory
        holds one class's double-backward graph, not all of them.

        Returns:
            The loss (scalar) and the gradient (n, C, H, W), zero outside the classes' rows.
        """
        images = images.detach()
        total, grad = images.new_zeros(()), torch.zeros_like(images)
        classes = [c for c in range(self.ds.num_classes) if len(self.rows[c])]
        for c in classes:
            pool = self.pools[c]
            picked = pool[torch.randperm(len(pool), generator=generator)[: self.dc.gm_batch_real]]
            real = self.ds.normalize(self.ds.train_images[picked.to(self.ds.device)]).to(images.device)
            seed, strategy = self._draw(generator)
            syn = images[self.rows[c]].requires_grad_(True)  # (k, C, H, W)
            loss = class_match_loss(net, real, syn, c, seed=seed, strategy=strategy, generator=self._aug_generator)
            (grad[self.rows[c]],) = torch.autograd.grad(loss, syn)
            total = total + loss.detach()
        return total / len(classes), grad

    def train_network(self, net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                      generator: torch.Generator) -> None:
        """``gm_inner_loop`` epochs of SGD on the synthetic set (n, C, H, W), minibatches of ``gm_batch_real``, DSA."""
        images = images.detach()
        for _ in range(self.dc.gm_inner_loop):
            order = torch.randperm(len(images), generator=generator).to(images.device)
            for batch in order.split(self.dc.gm_batch_real):
                seed, strategy = self._draw(generator)
                x = images[batch]
                if strategy:
                    x = dsa(x, generator=self._aug_generator.manual_seed(seed), strategy=strategy)
                loss = F.cross_entropy(net(x), self.labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
