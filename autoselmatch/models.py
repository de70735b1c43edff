"""Networks used for experts, distillation and evaluation, as registered builders.

    model = build_model("convnet", channels=3, num_classes=100, image_size=32, width=128)
    flat = FlatModel(model)
    theta = flat.flatten()               # (P,) copy of the parameters
    logits = flat(theta, images)          # same as model(images), as a function of theta

Registered: ``convnet`` (depth, width, norm in {batch, instance, none}),
``convnetd4`` (depth 4, for 64x64), ``resnet18``, ``resnet34`` and ``resnet50``
(CIFAR stem: 3x3 stride-1 conv, no max-pool; BatchNorm), ``vgg11`` and ``vgg16``
(BatchNorm); the last five take ``norm``. Every builder takes
keyword-only ``channels``, ``num_classes`` and ``image_size``.

Small inputs: a pooling stage is skipped once the feature map is 1x1, so the
same builders run on 8x8 ``digits`` (the paper's geometries are unchanged).
The ConvNet pads 28x28 input by 3 in its first convolution, as MTT does.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from .errors import InvalidArgument
from .registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
NORMS = ("batch", "instance", "none")


@dataclass(frozen=True)
class ModelSpec:
    """A model by name plus builder options (``depth``, ``width``, ``norm``, ...)."""

    name: str = "convnet"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        MODELS.get(self.name)  # an unknown name fails here, when the settings are read, not after hours of work

    def build(self, *, channels: int, num_classes: int, image_size: int) -> nn.Module:
        return build_model(self.name, channels=channels, num_classes=num_classes, image_size=image_size, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(name: str, *, channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    """Build a registered model; unknown names or options raise ``InvalidArgument``."""
    builder = MODELS.get(name)
    try:
        return builder(channels=channels, num_classes=num_classes, image_size=image_size, **options)
    except TypeError as exc:
        raise InvalidArgument(f"bad options for model {name!r}: {exc}") from None


def list_models() -> list[str]:
    return MODELS.names()


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "instance":  # GroupNorm with one channel per group = instance norm with affine weights
        return nn.GroupNorm(width, width, affine=True)
    if kind == "none":
        return nn.Identity()
    raise InvalidArgument(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# ConvNet (the trajectory-matching literature's default)
# --------------------------------------------------------------------------------------------


MNIST_SIDE, MNIST_PADDING = 28, 3  # MTT pads 28x28 input by 3 in the first conv: 32 -> 16 -> 8 -> 4


class ConvNet(nn.Module):
    """``depth`` x [conv3x3(width) -> norm -> ReLU -> avg-pool 2], then a linear classifier.

    On 28x28 input (MNIST, Fashion-MNIST) the first convolution pads by 3, as
    MTT's ConvNet does, so its feature maps are 32x32 and the pools halve them
    without remainder (32 -> 16 -> 8 -> 4 at depth 3); every other size pads by 1.

    Args:
        channels: Input channels.
        num_classes: Output logits.
        image_size: Input side (square images).
        depth: Number of conv blocks (3 for 32x32, 4 for 64x64 in the papers).
        width: Channels of every conv layer (128 in the papers).
        norm: ``batch``, ``instance`` or ``none``.
    """

    def __init__(self, *, channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128,
                 norm: str = "batch") -> None:
        super().__init__()
        if depth < 1:
            raise InvalidArgument(f"ConvNet depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        first_padding = MNIST_PADDING if image_size == MNIST_SIDE else 1
        size, in_ch = image_size + 2 * (first_padding - 1), channels
        for block in range(depth):
            padding = first_padding if block == 0 else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=padding), _norm(norm, width), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, F) flattened features before the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@MODELS.register("convnet")
def convnet(*, channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128,
            norm: str = "batch") -> ConvNet:
    return ConvNet(channels=channels, num_classes=num_classes, image_size=image_size, depth=depth, width=width, norm=norm)


@MODELS.register("convnetd4")
def convnetd4(*, channels: int, num_classes: int, image_size: int, width: int = 128, norm: str = "batch") -> ConvNet:
    return ConvNet(channels=channels, num_classes=num_classes, image_size=image_size, depth=4, width=width, norm=norm)


# --------------------------------------------------------------------------------------------
# ResNets with the CIFAR stem
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34); ``out_ch`` output channels."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand to ``4 * planes``, and a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        out_ch = self.expansion * planes
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = _norm(norm, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images, as in the reference codes' CIFAR ResNets.

    3x3 stride-1 stem and no max-pool, then four stages of 64/128/256/512
    planes (stride 1, 2, 2, 2), global average pooling and a linear
    classifier on ``512 * block.expansion`` features. On 8x8 input the last
    stages run on 1x1 maps (a 3x3 convolution with padding 1 still applies).

    Args:
        block: :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50).
        num_blocks: Blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        channels: Input channels.
        num_classes: Output logits.
        image_size: Input side (unused: the network is fully convolutional up to the pooling).
        norm: ``batch``, ``instance`` or ``none``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, int, int, int], *,
                 channels: int, num_classes: int, image_size: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, 64)
        blocks: list[nn.Module] = []
        in_ch = 64
        for planes, stride, count in zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks):
            for k in range(count):
                blocks.append(block(in_ch, planes, stride if k == 0 else 1, norm))
                in_ch = planes * block.expansion
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(in_ch, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512 * expansion) pooled features before the classifier."""
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@MODELS.register("resnet18")
def resnet18(*, channels: int, num_classes: int, image_size: int, norm: str = "batch") -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), channels=channels, num_classes=num_classes, image_size=image_size,
                  norm=norm)


@MODELS.register("resnet34")
def resnet34(*, channels: int, num_classes: int, image_size: int, norm: str = "batch") -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), channels=channels, num_classes=num_classes, image_size=image_size,
                  norm=norm)


@MODELS.register("resnet50")
def resnet50(*, channels: int, num_classes: int, image_size: int, norm: str = "batch") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), channels=channels, num_classes=num_classes, image_size=image_size,
                  norm=norm)


# --------------------------------------------------------------------------------------------
# VGG with BatchNorm
# --------------------------------------------------------------------------------------------

#: Conv widths and max-pools ("M") of torchvision's configurations "A" (VGG-11) and "D" (VGG-16).
VGG_LAYOUTS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG (BatchNorm) for small images: max-pools stop at 1x1, one linear classifier on 512 pooled features.

    Args:
        layout: Conv widths and ``"M"`` (max-pool 2), one of :data:`VGG_LAYOUTS`.
        channels: Input channels.
        num_classes: Output logits.
        image_size: Input side (square images).
        norm: ``batch``, ``instance`` or ``none``.
    """

    def __init__(self, layout: tuple[int | str, ...], *, channels: int, num_classes: int, image_size: int,
                 norm: str = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for item in layout:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), _norm(norm, item), nn.ReLU(inplace=True)]
            in_ch = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512) pooled features before the classifier."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@MODELS.register("vgg11")
def vgg11(*, channels: int, num_classes: int, image_size: int, norm: str = "batch") -> VGG:
    return VGG(VGG_LAYOUTS["vgg11"], channels=channels, num_classes=num_classes, image_size=image_size, norm=norm)


@MODELS.register("vgg16")
def vgg16(*, channels: int, num_classes: int, image_size: int, norm: str = "batch") -> VGG:
    return VGG(VGG_LAYOUTS["vgg16"], channels=channels, num_classes=num_classes, image_size=image_size, norm=norm)


# --------------------------------------------------------------------------------------------
# Several networks as one (trained together, e.g. the runs of one evaluation)
# --------------------------------------------------------------------------------------------


class StackedLinear(nn.Module):
    """``k`` independent linear layers: (B, k * in) -> (B, k * out), block r through layer r."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.k, self.out_features = len(layers), layers[0].out_features
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (k, out, in)
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (k, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], self.k, -1)  # (B, k, in)
        return (torch.einsum("bki,koi->bko", x, self.weight) + self.bias).flatten(1)


def _stack_layer(layers: list[nn.Module]) -> nn.Module | None:
    """One layer doing the work of ``layers`` (same type and shape) side by side on channel blocks;
    ``None`` for a layer without parameters or buffers of its own (it acts per channel already)."""
    first, k = layers[0], len(layers)
    if isinstance(first, nn.Conv2d):
        stacked = nn.Conv2d(k * first.in_channels, k * first.out_channels, first.kernel_size, first.stride,
                            first.padding, first.dilation, k * first.groups, first.bias is not None,
                            first.padding_mode)
    elif isinstance(first, nn.BatchNorm2d):
        stacked = nn.BatchNorm2d(k * first.num_features, first.eps, first.momentum, first.affine,
                                 first.track_running_stats)
    elif isinstance(first, nn.GroupNorm):
        stacked = nn.GroupNorm(k * first.num_groups, k * first.num_channels, first.eps, first.affine)
    elif isinstance(first, nn.Linear) and first.bias is not None:
        return StackedLinear(layers)
    elif next(first.parameters(recurse=False), None) is None and next(first.buffers(recurse=False), None) is None:
        return None
    else:
        raise InvalidArgument(f"cannot train several {type(first).__name__} layers as one; "
                              "set evaluate.stack_runs = 1")
    with torch.no_grad():
        for name, tensor in [*stacked.named_parameters(recurse=False), *stacked.named_buffers(recurse=False)]:
            if tensor.dim() == 0:  # num_batches_tracked: a count, the same in every network
                tensor.copy_(getattr(first, name))
            else:
                tensor.copy_(torch.cat([getattr(layer, name).detach() for layer in layers]))
    return stacked


def stack_models(models: list[nn.Module]) -> nn.Module:
    """``k`` networks of one architecture as a single network that trains them side by side.

    Every convolution becomes a grouped one (``k`` times the groups), every
    norm layer covers ``k`` times the channels and the classifier becomes a
    :class:`StackedLinear`, so network r sees only channel block r: the
    stacked network does the arithmetic of the ``k`` networks (equal up to
    float rounding), with one kernel launch per layer instead of ``k``. Shapes:
    input (B, k * C, H, W), block r being network r's batch; output
    (B, k * num_classes), block r being network r's logits.

    Args:
        models: Networks built by one builder with the same options (their
            weights may differ); a single network is returned unchanged.

    Raises:
        InvalidArgument: A layer type it cannot stack (see :func:`_stack_layer`).
    """
    if len(models) == 1:
        return models[0]
    stacked = copy.deepcopy(models[0])
    per_model = [dict(model.named_modules()) for model in models]
    for name, _ in models[0].named_modules():
        layer = _stack_layer([modules[name] for modules in per_model]) if name else None
        if layer is not None:
            stacked.set_submodule(name, layer)
    return stacked


# --------------------------------------------------------------------------------------------
# A module as a function of one flat parameter vector
# --------------------------------------------------------------------------------------------


class FlatModel:
    """Call ``module`` as a pure function of a flat parameter vector ``theta`` (P,).

    The distillation core differentiates through many student steps taken in
    parameter space; keeping the student as one vector makes each step a
    single tensor op (``theta - lr * grad``) and the matching loss a norm.
    Buffers (BatchNorm running statistics) are the module's own; in training
    mode BatchNorm uses batch statistics, as the trajectory-matching student
    does.

    Args:
        module: The network; its current parameters define shapes and order.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def flatten(self) -> torch.Tensor:
        """A detached copy of the module's parameters as one (P,) vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` (P,) shaped like each named parameter."""
        if theta.shape != (self.num_params,):
            raise InvalidArgument(f"flat parameter vector must have shape ({self.num_params},), got {tuple(theta.shape)}")
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.numels), self.shapes)}

    def load(self, theta: torch.Tensor) -> None:
        """Copy ``theta`` into the module's parameters in place."""
        with torch.no_grad():
            for p, t in zip(self.module.parameters(), torch.split(theta, self.numels)):
                p.copy_(t.view_as(p))

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(P,), (B, C, H, W) -> logits (B, num_classes)."""
        return functional_call(self.module, self.unflatten(theta), (x,))


__all__ = [
    "MODELS",
    "BasicBlock",
    "Bottleneck",
    "ConvNet",
    "FlatModel",
    "ModelSpec",
    "ResNet",
    "StackedLinear",
    "VGG",
    "VGG_LAYOUTS",
    "build_model",
    "list_models",
    "stack_models",
]
