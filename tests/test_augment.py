import pytest
import torch

from autoselmatch.augment import (
    AUGMENTATIONS,
    DSA_STRATEGIES,
    augment_grouped,
    augment_of_set,
    combined_augment,
    cutout_size,
    default_pad,
    draw_strategies,
    dsa,
    dsa_per_image,
    get_augmentation,
    simple_augment,
)
from autoselmatch.errors import InvalidArgument
from autoselmatch.registry import UnknownNameError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference translation of one (C, H, W) image: out[i, j] = x[i + dy, j + dx], 0 outside."""
    _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = x[:, i + dy, j + dx]
    return out


def find_shift(out: torch.Tensor, x: torch.Tensor, max_shift: int) -> tuple[int, int] | None:
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if torch.equal(out, shifted(x, dy, dx)):
                return dy, dx
    return None


def ramp(b: int, side: int, axis: int) -> torch.Tensor:
    """(b, 1, side, side) images equal to the normalised coordinate along ``axis`` (3: x, 2: y)."""
    coords = torch.linspace(-1, 1, side)
    img = coords.view(1, side) if axis == 3 else coords.view(side, 1)
    return img.expand(side, side).reshape(1, 1, side, side).repeat(b, 1, 1, 1)


# --------------------------------------------------------------------------------------------
# DSA
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", DSA_STRATEGIES)
def test_dsa_gradient_reaches_pixels(strategy):
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    out = dsa(x, generator=gen(), strategy=strategy)
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_dsa_draws_one_strategy_per_call_from_the_pool():
    x = torch.randn(64, 3, 8, 8)
    for seed in range(5):
        out = dsa(x, generator=gen(seed), strategies=("flip",))
        mirrored = (out == x.flip(3)).flatten(1).all(1)
        same = (out == x).flatten(1).all(1)
        assert (mirrored | same).all()


def test_dsa_flip_is_an_exact_mirror_of_the_flipped_rows():
    x = torch.randn(200, 3, 8, 8)
    out = dsa(x, generator=gen(1), strategy="flip")
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (mirrored ^ same).all()  # every row is exactly one of the two
    assert 60 < int(mirrored.sum()) < 140  # probability 0.5, per sample


def test_dsa_crop_is_a_translation_within_an_eighth_of_the_side():
    x = torch.randn(12, 2, 16, 16)
    out = dsa(x, generator=gen(2), strategy="crop")
    shifts = [find_shift(out[b], x[b], max_shift=2) for b in range(len(x))]  # 16 / 8 = 2
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 1  # per-sample parameters


def test_dsa_cutout_zeroes_one_square_of_half_the_side():
    x = torch.rand(64, 3, 16, 16) + 1.0  # no zero pixels before cutout
    out = dsa(x, generator=gen(3), strategy="cutout")
    ch, cw = cutout_size(16, 16)
    assert (ch, cw) == (8, 8)
    full = 0
    for b in range(len(x)):
        zero = (out[b] == 0).all(0)  # (H, W)
        assert torch.equal(out[b][:, ~zero], x[b][:, ~zero])  # untouched elsewhere
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        assert len(rows) and len(cols)
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
        assert len(rows) <= ch and len(cols) <= cw  # clipped at the border at most
        full += len(rows) == ch and len(cols) == cw
    assert full > 10


def test_dsa_color_changes_intensities_but_not_geometry():
    x = torch.randn(8, 3, 8, 8)
    out = dsa(x, generator=gen(4), strategy="color")
    assert not torch.allclose(out, x)
    for b in range(len(x)):
        # every pixel goes through the same per-sample affine map of its channels: no pixel moves
        design = torch.cat([x[b].flatten(1).T, torch.ones(64, 1)], 1).double()  # (HW, C + 1)
        target = out[b].flatten(1).T.double()  # (HW, C)
        coef = torch.linalg.lstsq(design, target).solution
        assert torch.allclose(design @ coef, target, atol=1e-4)


def test_dsa_color_brightness_shift_is_bounded_on_grey_images():
    x = torch.zeros(256, 1, 4, 4)  # contrast and saturation keep a constant image constant
    out = dsa(x, generator=gen(5), strategy="color")
    shift = out[:, 0, 0, 0]
    assert torch.allclose(out, shift.view(-1, 1, 1, 1).expand_as(out))
    assert shift.abs().max() <= 0.5  # brightness 1.0: shift in [-0.5, 0.5)
    assert shift.abs().max() > 0.4


def test_dsa_scale_zooms_each_axis_by_at_most_1_2():
    side = 33
    x = ramp(64, side, axis=3)
    out = dsa(x, generator=gen(6), strategy="scale")
    c = side // 2
    # along the centre row, output = sx * ramp, so the slope ratio is the zoom factor
    slope = (out[:, 0, c, c + 2] - out[:, 0, c, c - 2]) / (x[:, 0, c, c + 2] - x[:, 0, c, c - 2])
    assert slope.min() >= 1 / 1.2 - 1e-4 and slope.max() <= 1.2 + 1e-4
    assert slope.max() - slope.min() > 0.1  # per-sample factors
    assert torch.allclose(out[:, 0, c, c], x[:, 0, c, c], atol=1e-6)  # centre stays


def test_dsa_rotate_turns_by_at_most_15_degrees():
    side = 33
    x = ramp(64, side, axis=3)
    out = dsa(x, generator=gen(7), strategy="rotate")
    c = side // 2
    step = 2 / (side - 1)
    gx = (out[:, 0, c, c + 1] - out[:, 0, c, c - 1]) / (2 * step)  # cos(angle)
    gy = (out[:, 0, c + 1, c] - out[:, 0, c - 1, c]) / (2 * step)  # -sin(angle)
    angle = torch.rad2deg(torch.atan2(-gy, gx))
    assert angle.abs().max() <= 15.0 + 1e-3
    assert angle.abs().max() > 10.0
    assert torch.allclose(gx**2 + gy**2, torch.ones(64), atol=1e-4)  # a rotation, not a zoom


def test_dsa_seeded_calls_reproduce():
    x = torch.randn(16, 3, 8, 8)
    for strategy in (None, *DSA_STRATEGIES):
        a = dsa(x, generator=gen(11), strategy=strategy)
        b = dsa(x, generator=gen(11), strategy=strategy)
        assert torch.equal(a, b)
    assert not torch.equal(dsa(x, generator=gen(11), strategy="crop"), dsa(x, generator=gen(12), strategy="crop"))


def test_dsa_generator_state_resumes_bit_for_bit():
    x = torch.randn(16, 3, 8, 8)
    g = gen(3)
    dsa(x, generator=g)
    state = g.get_state()
    expected = dsa(x, generator=g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(dsa(x, generator=g2), expected)


def test_dsa_rejects_bad_input():
    with pytest.raises(InvalidArgument, match="B, C, H, W"):
        dsa(torch.randn(3, 8, 8))
    with pytest.raises(InvalidArgument, match="float"):
        dsa(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(InvalidArgument, match="strategy"):
        dsa(torch.randn(2, 1, 8, 8), strategy="blur")
    with pytest.raises(InvalidArgument, match="strategies"):
        dsa(torch.randn(2, 1, 8, 8), strategies=("flip", "blur"))


# --------------------------------------------------------------------------------------------
# Simple and combined
# --------------------------------------------------------------------------------------------


def test_default_pad_is_4_at_32_and_scales_with_the_side():
    assert default_pad(32) == 4
    assert default_pad(64) == 8
    assert default_pad(8) == 1
    assert default_pad(4) == 1


def test_simple_augment_is_a_padded_crop_plus_flip():
    x = torch.randn(40, 1, 8, 8)
    out = simple_augment(x, generator=gen(8))  # pad 1 at 8x8
    flips = 0
    for b in range(len(x)):
        plain = find_shift(out[b], x[b], max_shift=1)
        mirrored = find_shift(out[b].flip(2), x[b], max_shift=1)
        assert plain is not None or mirrored is not None
        flips += plain is None
    assert 5 < flips < 35


def test_without_flip_the_simple_augmentation_only_crops_everywhere_it_applies():
    """data.flip = false (digits): no mirrored row from simple, nor from the real rows of combined, in any form."""
    x = torch.randn(40, 1, 8, 8)
    mask = torch.arange(40) < 10  # 10 distilled rows, 30 real ones
    outs = [simple_augment(x, generator=gen(8), flip=False),
            augment_grouped(x, 0, "simple", generator=gen(8), flip=False),
            get_augmentation("simple")(x, None, gen(8), flip=False),
            get_augmentation("combined")(x, None, gen(8), flip=False)]
    combined = combined_augment(x, mask, generator=gen(8), flip=False)
    outs.append(torch.cat([x[:10], combined[10:]]))  # the real rows of a combined batch
    for out in outs:
        assert all(find_shift(out[b], x[b], max_shift=1) is not None for b in range(len(x)))
    flipped = simple_augment(x, generator=gen(8), flip=True)
    assert any(find_shift(flipped[b], x[b], max_shift=1) is None for b in range(len(x)))


def test_simple_augment_rejects_negative_pad():
    with pytest.raises(InvalidArgument, match="pad"):
        simple_augment(torch.randn(2, 1, 8, 8), pad=-1)


def test_combined_routes_each_part_to_its_own_augmentation():
    x = torch.rand(30, 3, 8, 8) + 1.0
    mask = torch.zeros(30, dtype=torch.bool)
    mask[torch.tensor([0, 3, 4, 9, 17, 29])] = True
    out = combined_augment(x, mask, generator=gen(9))

    g = gen(9)
    distilled = dsa_per_image(x[mask], draw_strategies(6, generator=g), generator=g)
    selected = simple_augment(x[~mask], generator=g)
    assert torch.equal(out[mask], distilled)  # rows come back in their original places
    assert torch.equal(out[~mask], selected)
    for b in torch.nonzero(~mask).flatten().tolist():  # D_select rows: crop (pad 1) + flip only
        assert find_shift(out[b], x[b], 1) is not None or find_shift(out[b].flip(2), x[b], 1) is not None


def test_combined_uses_dsa_strategies_on_distilled_rows():
    x = torch.rand(20, 3, 16, 16) + 1.0
    mask = torch.ones(20, dtype=torch.bool)
    mask[10:] = False
    g = gen(0)
    hit_color = False
    for _ in range(20):  # color changes intensities: simple augmentation never does
        out = combined_augment(x, mask, generator=g)
        selected_values = set(out[10:].unique().tolist()) - {0.0}
        assert selected_values <= set(x[10:].unique().tolist())
        hit_color |= not set(out[:10].unique().tolist()) - {0.0} <= set(x[:10].unique().tolist())
    assert hit_color


def test_dsa_per_image_runs_each_strategy_on_the_rows_that_drew_it():
    x = torch.randn(40, 3, 16, 16)
    index = draw_strategies(40, generator=gen(4))
    assert set(index.tolist()) == set(range(len(DSA_STRATEGIES)))  # 40 draws hit all six here
    out = dsa_per_image(x, index, generator=gen(5))

    g = gen(5)  # reference: one dsa call per strategy, in DSA_STRATEGIES order, rows back in place
    expected = torch.empty_like(x)
    for k, name in enumerate(DSA_STRATEGIES):
        rows = torch.nonzero(index == k).flatten()
        expected[rows] = dsa(x[rows], generator=g, strategy=name)
    assert torch.equal(out, expected)


def test_dsa_per_image_gradient_reaches_pixels():
    x = torch.randn(24, 1, 8, 8, requires_grad=True)
    out = dsa_per_image(x, torch.arange(24) % len(DSA_STRATEGIES), generator=gen())
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad != 0).any(dim=(1, 2, 3)).all()


def test_dsa_per_image_rejects_bad_indices():
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(InvalidArgument, match="strategy_index must have shape"):
        dsa_per_image(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(InvalidArgument, match=r"strategy_index values must be in \[0, 5\], got \[0, 6\]"):
        dsa_per_image(x, torch.tensor([0, 1, 2, 6]))


def test_combined_draws_a_strategy_per_distilled_image():
    # Constant images: colour makes a row another constant, crop/cutout/scale/rotate bring in zeros.
    # Both kinds in one batch is impossible with one strategy per batch.
    x = torch.ones(64, 1, 16, 16)
    mask = torch.ones(64, dtype=torch.bool)
    out = combined_augment(x, mask, generator=gen(2))
    flat = out.flatten(1)
    recoloured = (flat.max(1).values - flat.min(1).values < 1e-6) & ((flat[:, 0] - 1).abs() > 1e-3)
    zeroed = (flat == 0).any(1)
    unchanged = (flat == 1).all(1)  # flip, or a zero shift
    assert recoloured.sum() >= 3 and zeroed.sum() >= 10 and unchanged.sum() >= 3


def test_combined_is_reproducible_for_a_seed():
    x = torch.randn(32, 3, 8, 8)
    mask = torch.arange(32) % 3 == 0
    first = combined_augment(x, mask, generator=gen(7))
    assert torch.equal(first, combined_augment(x, mask, generator=gen(7)))
    assert not torch.equal(first, combined_augment(x, mask, generator=gen(8)))
    grouped = augment_grouped(x, 12, "combined", generator=gen(1), host_generator=gen(2))
    assert torch.equal(grouped, augment_grouped(x, 12, "combined", generator=gen(1), host_generator=gen(2)))
    g = gen(1)  # host_generator draws the strategies, generator the parameters
    expected = torch.cat([dsa_per_image(x[:12], draw_strategies(12, generator=gen(2)), generator=g),
                          simple_augment(x[12:], generator=g)])
    assert torch.equal(grouped, expected)


def test_augment_grouped_takes_a_strategy_for_dsa_only():
    x = torch.randn(6, 1, 8, 8)
    assert torch.equal(augment_grouped(x, 3, "dsa", generator=gen(1), strategy="cutout"),
                       dsa(x, generator=gen(1), strategy="cutout"))
    with pytest.raises(InvalidArgument, match="strategy= applies to the dsa augmentation only"):
        augment_grouped(x, 3, "combined", strategy="crop")


def test_combined_rejects_bad_mask():
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(InvalidArgument, match="distill_mask"):
        combined_augment(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InvalidArgument, match="distill_mask"):
        combined_augment(x, torch.ones(4))


def test_augment_grouped_matches_combined_for_grouped_batches():
    x = torch.randn(10, 3, 8, 8)
    mask = torch.tensor([True] * 4 + [False] * 6)
    assert torch.equal(augment_grouped(x, 4, "combined", generator=gen(1)), combined_augment(x, mask, generator=gen(1)))
    assert torch.equal(augment_grouped(x, 4, "none"), x)
    with pytest.raises(InvalidArgument, match="num_distill"):
        augment_grouped(x, 11, "combined")


def test_registry_has_every_config_choice_with_one_signature():
    from autoselmatch.config import AUGMENTATIONS as CONFIG_CHOICES

    assert AUGMENTATIONS.names() == sorted(CONFIG_CHOICES)
    x = torch.randn(6, 3, 8, 8)
    mask = torch.tensor([True, False] * 3)
    for name in CONFIG_CHOICES:
        assert get_augmentation(name)(x, mask, gen()).shape == x.shape
    assert torch.equal(get_augmentation("none")(x, mask, None), x)
    with pytest.raises(UnknownNameError, match="combined"):
        get_augmentation("mixup")


def test_a_selection_trains_with_its_own_augmentation_only_under_combined():
    assert augment_of_set("combined", distilled=False) == "dsa"  # crop + flip alone would be all it got
    assert augment_of_set("combined", distilled=False, selection="simple") == "simple"
    assert augment_of_set("combined", distilled=True, selection="simple") == "combined"
    assert augment_of_set("simple", distilled=False) == "simple"  # other protocols apply to every set
