"""Small PNG helpers shared by the launchers and reports (PIL only; no display needed)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """Float images in [0,1] (values outside are clipped) -> uint8."""
  return (np.clip(np.asarray(images, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(rows, pad: int = 1, zoom: int = 2, missing=None) -> np.ndarray:
  """Tiles rows of HWC images ([R][C] images, each row a list or [C,H,W,3] array) into one image.

  A None tile (or an index listed in `missing`) is drawn black: "no match" in the paper's grids.
  """
  rows = [list(r) for r in rows]
  ncol = max(len(r) for r in rows)
  shape = next(np.shape(t) for r in rows for t in r if t is not None)
  h, w = shape[0] * zoom, shape[1] * zoom
  canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
  for i, r in enumerate(rows):
    for j, tile in enumerate(r):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      if tile is None or (missing is not None and (i, j) in missing):
        canvas[y:y + h, x:x + w] = 0
        continue
      t = to_uint8(tile)
      if t.ndim == 2 or t.shape[-1] == 1:
        t = np.repeat(t.reshape(t.shape[0], t.shape[1], 1), 3, -1)
      canvas[y:y + h, x:x + w] = np.kron(t, np.ones((zoom, zoom, 1), np.uint8))
  return canvas


def save_png(path: str, array: np.ndarray) -> None:
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
