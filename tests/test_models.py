"""Model registry, shapes, and the flat-parameter functional forward."""

import pytest
import torch

from autoselmatch.errors import InvalidArgument
from autoselmatch.models import FlatModel, ModelSpec, build_model, list_models
from autoselmatch.registry import UnknownNameError

GEOMETRIES = [
    ("convnet", dict(width=16, depth=3), 3, 32),
    ("convnet", dict(width=16, depth=2, norm="instance"), 1, 8),
    ("convnet", dict(width=16, depth=3, norm="none"), 1, 28),
    ("convnetd4", dict(width=8), 3, 64),
    ("resnet18", {}, 3, 32),
    ("vgg11", {}, 1, 8),
]


def test_registry_lists_models():
    assert {"convnet", "convnetd4", "resnet18", "vgg11"} <= set(list_models())
    with pytest.raises(UnknownNameError, match="resnet18"):
        build_model("resnet50", channels=3, num_classes=10, image_size=32)


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
