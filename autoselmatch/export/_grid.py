"""The image grid of a distilled set: one row per class, D_select and D_distill framed in two colours."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..synset import SyntheticSet

if TYPE_CHECKING:
    from PIL import Image

SELECT_COLOUR = (31, 119, 180)  # blue frame: D_select, frozen real images
DISTILL_COLOUR = (255, 127, 14)  # orange frame: D_distill, optimised pixels


def image_grid(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    distill_mask: torch.Tensor,
    classes: Sequence[str],
    *,
    num_classes: int = 10,
    per_class: int = 10,
    min_side: int = 32,
) -> "Image.Image":
    """A PIL image: one row per class (the first ``num_classes``), ``per_class`` images each.

    Each image is framed blue when it is in D_select (real, frozen) and orange
    when it is in D_distill (optimised). A row shows both groups when the
    class has both: half of the slots go to D_distill, the rest to D_select.

    Args:
        pixels: uint8 (n, C, H, W).
        labels: int64 (n,).
        distill_mask: bool (n,).
        classes: Class names (row titles).
        num_classes: Rows, taken from the first classes.
        per_class: Columns.
        min_side: Small images are enlarged (nearest neighbour) to at least this side.
    """
    from PIL import Image, ImageDraw

    _, channels, height, width = pixels.shape
    zoom = max(1, math.ceil(min_side / max(height, width)))
    border, gap, title_w, legend_h = 2, 2, 90, 18
    cell_w, cell_h = width * zoom + 2 * border, height * zoom + 2 * border
    rows = list(range(min(num_classes, len(classes))))
    canvas = Image.new("RGB", (title_w + per_class * (cell_w + gap), legend_h + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([2, 4, 12, 14], fill=SELECT_COLOUR)
    draw.text((16, 3), "D_select (real)", fill="black")
    draw.rectangle([120, 4, 130, 14], fill=DISTILL_COLOUR)
    draw.text((134, 3), "D_distill (optimised)", fill="black")
    for row, label in enumerate(rows):
        top = legend_h + row * (cell_h + gap)
        draw.text((2, top + cell_h // 2 - 5), str(classes[label])[:14], fill="black")
        for col, index in enumerate(_grid_pick(labels, distill_mask, label, per_class)):
            tile = pixels[index].permute(1, 2, 0).numpy()  # (H, W, C)
            tile = np.repeat(tile, 3, axis=2) if channels == 1 else tile[..., :3]
            picture = Image.fromarray(np.ascontiguousarray(tile)).resize((width * zoom, height * zoom), Image.NEAREST)
            left = title_w + col * (cell_w + gap)
            colour = DISTILL_COLOUR if bool(distill_mask[index]) else SELECT_COLOUR
            draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], fill=colour)
            canvas.paste(picture, (left + border, top + border))
    return canvas


def _grid_pick(labels: torch.Tensor, distill_mask: torch.Tensor, label: int, k: int) -> list[int]:
    """Up to ``k`` indices of class ``label``: half D_distill, half D_select, topped up from either."""
    members = labels == label
    distill = torch.nonzero(members & distill_mask).flatten().tolist()
    select = torch.nonzero(members & ~distill_mask).flatten().tolist()
    n_distill = min(len(distill), max(math.ceil(k / 2), k - len(select)))
    return distill[:n_distill] + select[: k - n_distill]


def grid_png(result: SyntheticSet, *, per_class: int = 10) -> bytes:
    """``image_grid`` of a result, as PNG bytes."""
    buffer = io.BytesIO()
    grid = image_grid(result.to_pixels(), result.labels, result.distill_mask, result.classes, per_class=per_class)
    grid.save(buffer, "PNG")
    return buffer.getvalue()
