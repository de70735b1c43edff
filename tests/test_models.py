"""Model registry, shapes, the flat-parameter functional forward, and stacked networks."""

import pytest
import torch

from autoselmatch.errors import InvalidArgument
from autoselmatch.models import FlatModel, ModelSpec, build_model, list_models, stack_models
from autoselmatch.registry import UnknownNameError

GEOMETRIES = [
    ("convnet", dict(width=16, depth=3), 3, 32),
    ("convnet", dict(width=16, depth=2, norm="instance"), 1, 8),
    ("convnet", dict(width=16, depth=3, norm="none"), 1, 28),
    ("convnetd4", dict(width=8), 3, 64),
    ("resnet18", {}, 3, 32),
    ("resnet34", {}, 1, 8),
    ("resnet50", {"norm": "instance"}, 1, 8),
    ("vgg11", {}, 1, 8),
    ("vgg16", {}, 1, 8),
]


def test_registry_lists_models():
    assert {"convnet", "convnetd4", "resnet18", "resnet34", "resnet50", "vgg11", "vgg16"} <= set(list_models())
    with pytest.raises(UnknownNameError, match="resnet18"):
        build_model("resnet101", channels=3, num_classes=10, image_size=32)


@pytest.mark.parametrize("name,params", [
    ("resnet18", 11_173_962), ("resnet34", 21_282_122), ("resnet50", 23_520_842),
    ("vgg11", 9_231_114), ("vgg16", 14_728_266),
])
def test_cifar_geometry_parameter_counts(name, params):
    """The parameter counts of the reference codes' CIFAR-10 networks (3x3 stride-1 stem, no max-pool)."""
    model = build_model(name, channels=3, num_classes=10, image_size=32)
    assert FlatModel(model).num_params == params
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) or name.startswith("vgg")


def test_bad_options():
    with pytest.raises(InvalidArgument, match="norm must be one of"):
        build_model("convnet", channels=3, num_classes=10, image_size=32, norm="layer")
    with pytest.raises(InvalidArgument, match="bad options for model 'resnet18'"):
        build_model("resnet18", channels=3, num_classes=10, image_size=32, width=7)


@pytest.mark.parametrize("name,options,channels,size", GEOMETRIES)
def test_output_and_embedding_shapes(name, options, channels, size):
    model = build_model(name, channels=channels, num_classes=7, image_size=size, **options)
    x = torch.randn(4, channels, size, size)
    assert model(x).shape == (4, 7)
    assert model.embed(x).shape[0] == 4 and model.embed(x).dim() == 2


def test_convnet_paper_geometry_parameter_count():
    model = ModelSpec("convnet", {"depth": 3, "width": 128, "norm": "batch"}).build(channels=3, num_classes=100, image_size=32)
    # 3 conv(3x3) + BN affine + a linear layer on 128*4*4 features, as in the trajectory-matching papers
    convs = (3 * 128 * 9 + 128) + 2 * (128 * 128 * 9 + 128)
    assert FlatModel(model).num_params == convs + 3 * 2 * 128 + (128 * 16 * 100 + 100)


@pytest.mark.parametrize("channels,size,first_padding,feature_sides", [
    (1, 28, 3, [32, 16, 8, 4]),  # MTT: 28x28 padded by 3 in the first conv, the last pool drops nothing
    (3, 32, 1, [32, 16, 8, 4]),
    (1, 8, 1, [8, 4, 2, 1]),
])
def test_convnet_feature_path(channels, size, first_padding, feature_sides):
    model = build_model("convnet", channels=channels, num_classes=10, image_size=size, width=8, depth=3)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.padding for c in convs] == [(first_padding, first_padding), (1, 1), (1, 1)]
    x = torch.randn(2, channels, size, size)
    sides = [convs[0](x).shape[-1]]
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, torch.nn.AvgPool2d):
            sides.append(x.shape[-1])
    assert sides == feature_sides
    assert x.shape == (2, 8, feature_sides[-1], feature_sides[-1])  # the map the classifier reads
    assert model.classifier.in_features == 8 * feature_sides[-1] ** 2


@pytest.mark.parametrize("name,options,channels,size", GEOMETRIES)
@pytest.mark.parametrize("train", [True, False])
def test_flat_forward_equals_module_forward(name, options, channels, size, train):
    torch.manual_seed(0)
    model = build_model(name, channels=channels, num_classes=5, image_size=size, **options).train(train)
    flat = FlatModel(model)
    theta = flat.flatten()
    x = torch.randn(6, channels, size, size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    model.load_state_dict(state)  # undo the running-statistics update of the first call
    assert torch.allclose(flat(theta, x), expected, atol=1e-5, rtol=1e-5)


def test_flat_forward_is_a_function_of_theta():
    model = build_model("convnet", channels=1, num_classes=3, image_size=8, width=8, depth=2).eval()
    flat = FlatModel(model)
    theta = flat.flatten().requires_grad_(True)
    x = torch.randn(2, 1, 8, 8)
    out = flat(theta * 2.0, x)
    assert not torch.allclose(out, model(x))
    out.sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    flat.load(theta.detach() * 2.0)
    assert torch.allclose(model(x), out.detach(), atol=1e-5)


def test_flatten_is_a_copy():
    model = build_model("convnet", channels=1, num_classes=3, image_size=8, width=8, depth=2)
    flat = FlatModel(model)
    theta = flat.flatten()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(theta, flat.flatten())


def test_unflatten_checks_shape():
    flat = FlatModel(build_model("convnet", channels=1, num_classes=3, image_size=8, width=8, depth=2))
    with pytest.raises(InvalidArgument, match="flat parameter vector"):
        flat.unflatten(torch.zeros(flat.num_params + 1))


@pytest.mark.parametrize("name,options,channels,size", GEOMETRIES)
def test_stacked_networks_compute_what_each_network_computes(name, options, channels, size):
    """Block r of the stacked input goes through network r alone: logits and BatchNorm statistics match."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(name, channels=channels, num_classes=5, image_size=size, **options))
    stacked = stack_models(models)
    xs = [torch.randn(4, channels, size, size) for _ in models]
    for train in (True, False):  # eval mode uses the running statistics the training pass updated
        stacked.train(train)
        out = stacked(torch.cat(xs, dim=1)).view(4, 3, 5)
        for r, (model, x) in enumerate(zip(models, xs)):
            assert torch.allclose(out[:, r], model.train(train)(x), atol=1e-4, rtol=1e-4)


def test_stacking_copies_the_weights_and_keeps_one_network_as_is():
    models = [build_model("convnet", channels=1, num_classes=3, image_size=8, width=4, depth=1) for _ in range(2)]
    assert stack_models(models[:1]) is models[0]
    stacked = stack_models(models)
    with torch.no_grad():
        stacked.features[0].weight.zero_()
    assert models[0].features[0].weight.abs().sum() > 0  # the stack owns its parameters
    assert stacked.features[0].groups == 2 and stacked.classifier.weight.shape == (2, 3, 4 * 4 * 4)


def test_stacking_refuses_layers_it_cannot_split():
    models = [torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.LayerNorm(2)) for _ in range(2)]
    with pytest.raises(InvalidArgument, match="cannot train several LayerNorm layers as one"):
        stack_models(models)
