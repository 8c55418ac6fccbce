"""A synthetic stand-in for the (noisy, clean) pair stream.

The restorer trainers accept any iterator of batch dicts

  {'noisy': float32 [B,32,32,3] in [0,1], 'clean': float32 [B,32,32,3],
   'aug_labels': float32 [B,9]}

optionally with `get_state()` / `set_state(state)` so that the iterator position is saved in
checkpoints. The real stream (balanced ArrayRecord pairs) lives outside edm_flax and is wired in
by the launchers; this module provides a small deterministic source of the same format for tests
and the tiny demo.
"""
from typing import Any, Iterator

import numpy as np

BATCH_KEYS = ('noisy', 'clean', 'aug_labels')
NUM_AUG_LABELS = 9


def validate_batch(batch: dict[str, Any], image_size: int = 32) -> None:
  """Raises ValueError when `batch` is not a pair batch of the expected format."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f'batch is missing keys {missing}; expected {BATCH_KEYS}')
  b = np.shape(batch['noisy'])[0] if np.ndim(batch['noisy']) else 0
  image_shape = (b, image_size, image_size, 3)
  for k in ('noisy', 'clean'):
    if tuple(np.shape(batch[k])) != image_shape:
      raise ValueError(f"batch['{k}'] has shape {np.shape(batch[k])}, expected {image_shape}")
  if tuple(np.shape(batch['aug_labels'])) != (b, NUM_AUG_LABELS):
    raise ValueError(f"batch['aug_labels'] has shape {np.shape(batch['aug_labels'])}, "
                     f'expected {(b, NUM_AUG_LABELS)}')


def synthetic_clean(rng: np.random.Generator, n: int, image_size: int = 32) -> np.ndarray:
  """Smooth colour images in [0,1]: 4×4 random colour grids, bilinearly upsampled."""
  coarse = rng.uniform(0.0, 1.0, size=(n, 4, 4, 3))
  # Separable linear interpolation from 4 to image_size pixels per axis.
  pos = np.linspace(0.0, 3.0, image_size)
  lo = np.minimum(np.floor(pos).astype(int), 2)
  frac = pos - lo
  interp = np.zeros((image_size, 4))
  interp[np.arange(image_size), lo] = 1.0 - frac
  interp[np.arange(image_size), lo + 1] = frac
  return np.einsum('hi,wj,nijc->nhwc', interp, interp, coarse).astype(np.float32)


class SyntheticPairSource:
  """Deterministic, checkpointable iterator of synthetic pair batches.

  Batch i is a pure function of (seed, i): clean images are smooth colour fields, the noisy
  "reconstruction" is the clean image plus Gaussian noise, clipped to [0,1]; the x-flip label is
  a random bit and the other 8 augmentation labels are 0 (most images pass the gates unchanged).

  Attributes:
    batch_size: images per batch.
    seed: base seed.
    noise_std: std of the corruption added to the clean image.
    image_size: side length of the square images.
  """

  def __init__(self, batch_size: int, *, seed: int = 0, noise_std: float = 0.2,
               image_size: int = 32):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.noise_std = float(noise_std)
    self.image_size = int(image_size)
    self._index = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self._index])
    self._index += 1
    b = self.batch_size
    clean = synthetic_clean(rng, b, self.image_size)
    noise = self.noise_std * rng.standard_normal(clean.shape)
    noisy = np.clip(clean + noise, 0.0, 1.0).astype(np.float32)
    aug_labels = np.zeros((b, NUM_AUG_LABELS), np.float32)
    aug_labels[:, 0] = rng.integers(0, 2, size=b)
    return {'noisy': noisy, 'clean': clean, 'aug_labels': aug_labels}

  def get_state(self) -> dict[str, int]:
    """JSON-serialisable position of the iterator."""
    return {'seed': self.seed, 'index': self._index}

  def set_state(self, state: dict[str, int]) -> None:
    """Restores a position written by `get_state`."""
    if int(state['seed']) != self.seed:
      raise ValueError(f"data state was saved with seed {state['seed']}, this source has "
                       f'seed {self.seed}')
    self._index = int(state['index'])
