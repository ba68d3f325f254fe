"""PNG preview of one sample: the input and the output central slice side by side, labels tinted,
with a millimetre grid drawn over each — straight on the input, pulled through the field on the output
(output pixel ``x`` shows the grid where it meets ``x + u(x)``, so the lines show where the input's
grid lines went)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]], dtype=np.float32)
GRID_RGB = np.array([255, 220, 0], dtype=np.float32)


def _window(slice_: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((slice_ - lo) / max(hi - lo, 1e-12), 0, 1)


def _grid_mask(pos_mm: list[np.ndarray], step_mm: float) -> np.ndarray:
    """True on pixels where the grid cell (``floor(pos / step_mm)`` of any in-plane coordinate) changes
    to the next pixel down or right: continuous one-pixel lines however the field stretches."""
    mask = np.zeros(pos_mm[0].shape, dtype=bool)
    for p in pos_mm:
        cell = np.floor(p / step_mm)
        mask[:-1, :] |= cell[:-1, :] != cell[1:, :]
        mask[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    return mask


def _panel(grey: np.ndarray, labels: np.ndarray | None, grid: np.ndarray, colours: dict[int, np.ndarray]) -> np.ndarray:
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    if labels is not None:
        for value, colour in colours.items():
            m = labels == value
            rgb[m] = 0.6 * rgb[m] + 0.4 * colour
    rgb[grid] = 0.35 * rgb[grid] + 0.65 * GRID_RGB
    return rgb


def render_preview(before: np.ndarray, after: np.ndarray, u_voxels: np.ndarray, spacing: tuple[float, ...],
                   path: str | os.PathLike, labels_before: np.ndarray | None = None,
                   labels_after: np.ndarray | None = None, colours: dict[int, tuple[float, float, float]] | None = None,
                   title: str = "") -> None:
    """Write the preview PNG of one 2D slice.

    ``before``/``after``: ``(rows, cols)``; ``u_voxels``: ``(2, rows, cols)`` in-plane pull field in voxels
    along (rows, cols); ``spacing``: mm per (row, col). ``colours``: RGB in 0…1 per label value.
    """
    lo, hi = np.percentile(before, [1, 99])
    extent = [n * s for n, s in zip(before.shape, spacing)]
    step = float(max(extent)) / 12
    index = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in before.shape], indexing="ij")
    straight = _grid_mask([i * s for i, s in zip(index, spacing)], step)
    pulled = _grid_mask([(i + u) * s for i, u, s in zip(index, u_voxels, spacing)], step)
    values = sorted(set(np.unique(labels_before).tolist()) - {0}) if labels_before is not None else []
    palette = {v: (np.asarray(colours[v], np.float32) * 255 if colours and v in colours else PALETTE[i % len(PALETTE)])
               for i, v in enumerate(values)}
    left = _panel(_window(before, lo, hi), labels_before, straight, palette)
    right = _panel(_window(after, lo, hi), labels_after, pulled, palette)
    gap = np.full((before.shape[0], 4, 3), 255.0)
    canvas = Image.fromarray(np.concatenate([left, gap, right], axis=1).astype(np.uint8))
    scale = max(1.0, 320 / max(extent) * min(spacing))
    size = (int(round((2 * extent[1] / min(spacing) + 4) * scale)), int(round(extent[0] / min(spacing) * scale)))
    canvas = canvas.resize(size, Image.NEAREST)
    banner = Image.new("RGB", (canvas.width, 18), (0, 0, 0))
    ImageDraw.Draw(banner).text((4, 3), f"input | DRDM output  grid {step:.0f} mm  {title}", fill=(255, 255, 255))
    sheet = Image.new("RGB", (canvas.width, canvas.height + banner.height))
    sheet.paste(banner, (0, 0))
    sheet.paste(canvas, (0, banner.height))
    sheet.save(path)
