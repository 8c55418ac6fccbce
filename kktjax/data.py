"""CIFAR-10 input: tensorflow-datasets loading with an array cache, binary labels, balanced
sampling, per-victim mean subtraction and the held-out evaluation pool (SPEC §1, §9).

CIFAR-10 is read only through tensorflow-datasets' `cifar10` builder as a random-access
`tfds.data_source` (ArrayRecord; needs pillow, not TensorFlow). Offline, tfds reads a prepared
copy from `data_dir` or the standard `TFDS_DATA_DIR` variable. The decoded arrays are cached
as `.npz` (keyed by split and the source files), so a run decodes the 60,000 PNGs once.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import os
from typing import NamedTuple, Sequence

import jax
import numpy as np

NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
VEHICLES = (0, 1, 8, 9)   # y = -1 (BCE target 0)
ANIMALS = (2, 3, 4, 5, 6, 7)   # y = +1
IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")


class DataError(ValueError):
  """A CIFAR-10 source, cache or list file that cannot be used; the message says why."""


class Cifar10(NamedTuple):
  images: np.ndarray   # uint8 [N, 32, 32, 3], HWC RGB, in canonical (id) order
  labels: np.ndarray   # int64 [N], CIFAR-10 classes 0..9


# ------------------------------------------------------------------------------------------
# Loading and caching.
# ------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | None = None) -> str | None:
  """The tfds data directory: the argument, else $TFDS_DATA_DIR, else None (tfds default)."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def default_cache_dir() -> str:
  return os.environ.get("KKTJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "kktjax"))


def _prepared_files(data_dir: str, split: str) -> list[str]:
  """The prepared cifar10 files of `split` in a tfds data dir; one-line errors otherwise."""
  if not os.path.isdir(data_dir):
    raise DataError(f"tfds data dir {data_dir!r} does not exist")
  versions = sorted(glob.glob(os.path.join(data_dir, "cifar10", "*", "dataset_info.json")))
  if not versions:
    raise DataError(f"tfds data dir {data_dir!r} holds no prepared 'cifar10' dataset "
                    "(expected cifar10/<version>/dataset_info.json)")
  version_dir = os.path.dirname(versions[-1])
  files = sorted(glob.glob(os.path.join(version_dir, f"cifar10-{split}.array_record*")))
  if not files:
    raise DataError(f"{version_dir!r} has no array_record files for split {split!r}; prepare "
                    "cifar10 with file_format='array_record'")
  return files


def _cache_key(split: str, files: Sequence[str]) -> str:
  h = hashlib.sha1(split.encode())
  for f in files:
    st = os.stat(f)
    h.update(f"{os.path.abspath(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:16]


def _decode_split(split: str, data_dir: str | None) -> Cifar10:
  import tensorflow_datasets as tfds  # heavy; only needed when the cache is cold
  source = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=False)
  records = source.__getitems__(range(len(source)))   # one batch read; stored order is shuffled
  ids = np.array([int(r["id"].split(b"_")[-1]) for r in records])
  order = np.argsort(ids)
  if not np.array_equal(ids[order], np.arange(len(ids))):
    raise DataError(f"cifar10 {split} ids are not a permutation of 0..{len(ids) - 1}")
  images = np.stack([r["image"] for r in records])[order]
  labels = np.array([r["label"] for r in records], np.int64)[order]
  return Cifar10(images.astype(np.uint8), labels)


def load_cifar10(split: str = "train", data_dir: str | None = None,
                 cache_dir: str | None = None) -> Cifar10:
  """Loads a CIFAR-10 split as arrays in canonical order (sorted by the tfds `id`).

  Args:
    split: "train" or "test".
    data_dir: tfds data dir; defaults to $TFDS_DATA_DIR, else tfds's own default.
    cache_dir: where decoded arrays are cached; defaults to $KKTJAX_CACHE or ~/.cache/kktjax.
      Pass "" to disable the cache.

  Returns:
    Cifar10(images uint8 [N, 32, 32, 3], labels int64 [N]).
  """
  if split not in SPLITS:
    raise DataError(f"unknown CIFAR-10 split {split!r}; expected one of {SPLITS}")
  data_dir = resolve_data_dir(data_dir)
  files = _prepared_files(data_dir, split) if data_dir else []
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  path = None
  if cache_dir and files:
    path = os.path.join(cache_dir, f"cifar10-{split}-{_cache_key(split, files)}.npz")
    if os.path.exists(path):
      with np.load(path) as f:
        return Cifar10(f["images"], f["labels"])
  try:
    data = _decode_split(split, data_dir)
  except DataError:
    raise
  except Exception as e:  # tfds raises many kinds; keep it to one line
    raise DataError(f"cannot read cifar10/{split} via tensorflow-datasets "
                    f"(data_dir={data_dir!r}): {type(e).__name__}: {str(e).splitlines()[0]}")
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, images=data.images, labels=data.labels)
    os.replace(tmp, path)   # atomic: a concurrent reader never sees half a cache file
  return data


# ------------------------------------------------------------------------------------------
# Binary task, sampling, preprocessing.
# ------------------------------------------------------------------------------------------
def binary_labels(labels: np.ndarray) -> np.ndarray:
  """CIFAR-10 class -> ±1: vehicles −1, animals +1 (SPEC §1)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"CIFAR-10 labels must lie in 0..9, got range [{labels.min()}, {labels.max()}]")
  return np.where(np.isin(labels, ANIMALS), 1, -1).astype(np.int8)


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A NumPy generator determined by a JAX key, for host-side sampling."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32).tolist())


def balanced_sample(rng: np.random.Generator | int, labels: np.ndarray, n_per_class: int,
                    pool: np.ndarray | None = None) -> np.ndarray:
  """Draws n_per_class vehicles and n_per_class animals without replacement.

  Args:
    rng: a NumPy generator or an int seed.
    labels: CIFAR-10 labels of the whole split.
    n_per_class: images per *binary* class.
    pool: optional subset of indices to draw from (e.g. the held-out pool).

  Returns:
    int64 indices [2·n_per_class]: the vehicles first, then the animals, each sorted.
  """
  rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
  pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
  y = binary_labels(np.asarray(labels)[pool])
  out = []
  for cls in (-1, 1):
    candidates = pool[y == cls]
    if len(candidates) < n_per_class:
      raise DataError(f"asked for {n_per_class} images of binary class {cls:+d}, but the pool "
                      f"has only {len(candidates)}")
    out.append(np.sort(rng.choice(candidates, n_per_class, replace=False)))
  return np.concatenate(out).astype(np.int64)


def to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 [0,255] -> float32 [0,1] (ToTensor scaling)."""
  return np.asarray(images, np.float32) / 255.0


def flatten_chw(images):
  """[..., H, W, C] -> [..., C·H·W] in PyTorch's C,H,W order."""
  *lead, h, w, c = images.shape
  return images.reshape(*lead, h * w, c).swapaxes(-1, -2).reshape(*lead, c * h * w)


def unflatten_chw(x, shape=IMAGE_SHAPE):
  """[..., C·H·W] (C,H,W order) -> [..., H, W, C]."""
  h, w, c = shape
  *lead, _ = x.shape
  return x.reshape(*lead, c, h * w).swapaxes(-1, -2).reshape(*lead, h, w, c)


class VictimData(NamedTuple):
  """A victim's training set in the form the victim sees it."""
  x: np.ndarray        # float [n, 3072], mean-subtracted, C,H,W flattened
  y: np.ndarray        # float [n], ±1
  mu: np.ndarray       # float [32, 32, 3], the mean of the victim's own images (HWC)
  images: np.ndarray   # float [n, 32, 32, 3] in [0,1] (the victim's clean images, HWC)


def victim_inputs(images: np.ndarray, binary_y: np.ndarray, dtype=np.float32) -> VictimData:
  """Per-victim mean subtraction (SPEC §1): μ over the victim's own images, x = flat(I − μ)."""
  images = np.asarray(images, dtype)
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f"victim images must be [n, 32, 32, 3], got {images.shape}")
  mu = images.mean(axis=0)
  return VictimData(flatten_chw(images - mu).astype(dtype), np.asarray(binary_y, dtype), mu,
                    images)


# ------------------------------------------------------------------------------------------
# Held-out evaluation pool (SPEC §9).
# ------------------------------------------------------------------------------------------
def read_duplicate_list(path: str) -> np.ndarray:
  """Test indices (in this copy's test order) listed in a ciFAIR duplicate mapping CSV.

  The file must have a `test_index_in_npz` column (the mapped list in shared/data), whose
  values are the numbers in the tfds ids `test_%05d`.
  """
  if not os.path.isfile(path):
    raise DataError(f"duplicate list {path!r} does not exist")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "test_index_in_npz" not in reader.fieldnames:
      raise DataError(f"duplicate list {path!r} has no 'test_index_in_npz' column "
                      f"(columns: {reader.fieldnames})")
    out = []
    for line, row in enumerate(reader, start=2):
      try:
        idx = int(row["test_index_in_npz"])
      except (TypeError, ValueError):
        raise DataError(f"{path}:{line}: test_index_in_npz {row['test_index_in_npz']!r} is not "
                        "an integer") from None
      if not 0 <= idx < 10000:
        raise DataError(f"{path}:{line}: test index {idx} outside 0..9999")
      out.append(idx)
  return np.unique(np.array(out, np.int64))


def heldout_pool(duplicate_lists: Sequence[str], num_test: int = 10000) -> np.ndarray:
  """Test indices minus every index in the given duplicate lists (all rows are dropped)."""
  drop = [read_duplicate_list(p) for p in duplicate_lists]
  drop = np.concatenate(drop) if drop else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(num_test), drop)
