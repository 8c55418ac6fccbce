"""The restorer's training stream: balanced subsets of the pair dataset plus noise examples.

SPEC §6 "Balancing": with z_j the number of records of CIFAR image j, each balanced subset keeps
every record independently with probability min(1, 11/z_j); the stream concatenates fresh,
independent, shuffled subsets ("epochs") on the fly. SPEC §6 "Noise examples": a fraction
(10%) of the training samples pair a post-processed Gaussian candidate μ + r*·x with a random
member of a balanced 300-image augmented set whose mean is μ.

Sampling an epoch. Per image, the number kept K_j ~ Binomial(z_j, p_j) and, given K_j, a uniform
K_j-subset of the image's records (vectorised Floyd sampling). This has exactly the distribution
of independent Bernoulli(p_j) keeps, but the epoch *sizes* cost one binomial draw per image, so
mapping a stream position to its epoch (e.g. when resuming deep into training) is cheap.

Pipeline (grain): a `MapDataset` whose element k is batch k's plan (its record keys and number
of noise examples) -> `.map(LoadBatch)` (read, decode, add noise examples, permute) ->
`.to_iter_dataset(ReadOptions)` [-> `.mp_prefetch`]. Batch k is a pure function of (seed, k), so
output does not depend on the number of threads or workers, and `TrainStream`'s state
{"next_batch": k} resumes exactly, with any number of workers.

The r-scaling of noise examples is a NumPy copy of SPEC §4.1 (`postprocess_rscale`), so that
data workers need no JAX.
"""
from __future__ import annotations

import collections
import fractions
import os
import sys
import threading
from typing import Any, Callable, Mapping, Sequence

from absl import flags
from absl import logging
import grain
import numpy as np

from kktjax import records

TARGET_PER_IMAGE = 11
NOISE_FRACTION = 0.1
NOISE_SIGMA = 1e-3
NOISE_SET_SIZE = 300
# Sub-streams of np.random.default_rng([seed, stream, i]).
_EPOCH_STREAM, _BATCH_STREAM, _POOL_STREAM = 0, 1, 2
BATCH_KEYS = ("noisy", "clean", "aug_labels", "cifar_index", "is_noise", "record_key")

NoiseFn = Callable[[np.random.Generator], Mapping[str, Any]]


# ------------------------------------------------------------------------------------------
# Balanced subsets.
# ------------------------------------------------------------------------------------------


def keep_probabilities(counts: np.ndarray, target: float = TARGET_PER_IMAGE) -> np.ndarray:
  """p_j = min(1, target / z_j), and 0 where z_j = 0."""
  counts = np.asarray(counts, np.float64)
  return np.where(counts > 0, np.minimum(1.0, target / np.maximum(counts, 1.0)), 0.0)


def _floyd_subsets(rng: np.random.Generator, sizes: np.ndarray, ks: np.ndarray) -> np.ndarray:
  """Uniform ks[g]-subsets of range(sizes[g]) for all groups g at once (Floyd's algorithm).

  Returns the offsets group after group (ks[0] of group 0, then ks[1] of group 1, ...).
  """
  kmax = int(ks.max()) if ks.size else 0
  chosen = np.full((ks.size, kmax), -1, np.int64)
  for s in range(kmax):
    act = np.flatnonzero(ks > s)
    j = sizes[act] - ks[act] + s   # Floyd: for j in n-k .. n-1, t ~ U{0..j}
    t = rng.integers(0, j + 1)
    taken = (chosen[act, :s] == t[:, None]).any(axis=1)
    chosen[act, s] = np.where(taken, j, t)
  return chosen[np.arange(kmax)[None, :] < ks[:, None]]


class BalancedPlan:
  """The infinite balanced key sequence: epoch 0's shuffled subset, then epoch 1's, ...

  Args:
    cifar_index: int [N], the CIFAR image of each record key (`PairDataSource.cifar_index`).
    seed: non-negative int; epoch e draws from np.random.default_rng([seed, 0, e]).
    target_per_image: the expected number of records kept per image (11).
  """

  def __init__(self, cifar_index: np.ndarray, seed: int,
               target_per_image: float = TARGET_PER_IMAGE):
    cifar_index = np.asarray(cifar_index)
    if cifar_index.ndim != 1 or cifar_index.size == 0:
      raise ValueError(f"cifar_index must be a non-empty 1-D array, got shape {cifar_index.shape}")
    if int(seed) < 0:
      raise ValueError(f"seed must be >= 0, got {seed}")
    if not target_per_image > 0:
      raise ValueError(f"target_per_image must be > 0, got {target_per_image}")
    self.seed = int(seed)
    self.target_per_image = float(target_per_image)
    self.num_records = int(cifar_index.size)
    key_dtype = np.int32 if cifar_index.size < 2**31 else np.int64
    if cifar_index.min() < 0:
      raise ValueError(f"cifar_index must be >= 0, got {cifar_index.min()}")
    # Group keys by image; uint16 makes NumPy's stable argsort a radix sort (O(N)).
    sortable = cifar_index.astype(np.uint16) if cifar_index.max() < 2**16 else cifar_index
    self._order = np.argsort(sortable, kind="stable").astype(key_dtype)
    counts = np.bincount(cifar_index)
    self._z = counts[counts > 0]   # z_j of the images present, in image order
    self._starts = np.cumsum(self._z) - self._z
    self._p = keep_probabilities(self._z, self.target_per_image)
    self._ends: list[int] = []   # cumulative end position of each computed epoch
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"]
    state["_cache"] = collections.OrderedDict()
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _epoch_rng(self, epoch: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, _EPOCH_STREAM, int(epoch)])

  def epoch_size(self, epoch: int) -> int:
    return int(self._epoch_rng(epoch).binomial(self._z, self._p).sum())

  def _compute_epoch(self, epoch: int) -> np.ndarray:
    rng = self._epoch_rng(epoch)
    ks = rng.binomial(self._z, self._p)   # first draw: epoch_size uses the same numbers
    offsets = _floyd_subsets(rng, self._z, ks)
    keys = self._order[np.repeat(self._starts, ks) + offsets].astype(np.int64)
    rng.shuffle(keys)
    return keys

  def epoch_keys(self, epoch: int) -> np.ndarray:
    """int64 record keys of epoch `epoch`, shuffled (cached for the two latest epochs)."""
    with self._lock:
      keys = self._cache.get(epoch)
      if keys is None:
        keys = self._compute_epoch(epoch)
        self._cache[epoch] = keys
        while len(self._cache) > 2:
          self._cache.popitem(last=False)
      return keys

  def _extend(self, position: int) -> None:
    with self._lock:
      while not self._ends or self._ends[-1] <= position:
        end = (self._ends[-1] if self._ends else 0) + self.epoch_size(len(self._ends))
        self._ends.append(end)

  def epoch_of(self, position: int) -> tuple[int, int]:
    """(epoch, position within it) of a global stream position."""
    self._extend(position)
    epoch = int(np.searchsorted(self._ends, position, side="right"))
    start = self._ends[epoch - 1] if epoch else 0
    return epoch, position - start

  def keys(self, start: int, stop: int) -> np.ndarray:
    """int64 record keys at stream positions [start, stop)."""
    parts, pos = [], start
    while pos < stop:
      epoch, offset = self.epoch_of(pos)
      keys = self.epoch_keys(epoch)
      take = keys[offset:offset + (stop - pos)]
      parts.append(take)
      pos += take.size
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------
# Noise examples.
# ------------------------------------------------------------------------------------------


def postprocess_rscale(x: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, float]:
  """SPEC §4.1 paper rescaling in NumPy: (μ' + r*·x, r*), μ' = clip(μ, 0, 1).

  r* is the largest r >= 0 with μ' + r·x in [0,1]: the minimum of (1 − μ')/x over x > 0 and
  −μ'/x over x < 0, clamped at 0 (0 when x = 0 everywhere). Same rule as the JAX
  post-processing of the attack; here for one image in a data-pipeline worker.
  """
  x = np.asarray(x, np.float64)
  mu = np.clip(np.asarray(mu, np.float64), 0.0, 1.0)
  r = np.inf
  pos, neg = x > 0, x < 0
  if pos.any():
    r = min(r, float(((1.0 - mu[pos]) / x[pos]).min()))
  if neg.any():
    r = min(r, float((-mu[neg] / x[neg]).min()))
  r = max(r, 0.0) if np.isfinite(r) else 0.0
  return mu + r * x, r


class NoiseSource:
  """Noise examples from a pool of clean augmented images (SPEC §6 "Noise examples").

  Each call draws a fresh set of `set_size` pool images (150 + 150 by binary label when
  `binary_labels` is given, else uniform), μ = the set's mean, x ~ N(0, σ²I), and returns
  μ' + r*·x paired with a uniformly chosen set member, its aug labels and CIFAR index.
  Picklable, so it runs in grain worker processes.

  Args:
    clean_images: float [M,32,32,3], augmented clean images (unclipped).
    aug_labels: float [M,9].
    cifar_index: int [M].
    binary_labels: optional [M] in {-1, +1}, for balanced sets.
    sigma: σ of the candidate (the output does not depend on it: r* absorbs the scale).
    set_size: images per set (300).
  """

  def __init__(self, clean_images: np.ndarray, aug_labels: np.ndarray, cifar_index: np.ndarray,
               *, binary_labels: np.ndarray | None = None, sigma: float = NOISE_SIGMA,
               set_size: int = NOISE_SET_SIZE):
    clean_images = np.asarray(clean_images)
    m = clean_images.shape[0] if clean_images.ndim == 4 else -1
    if clean_images.shape[1:] != records.IMAGE_SHAPE:
      raise ValueError(f"clean_images has shape {clean_images.shape}, expected [M,32,32,3]")
    if np.shape(aug_labels) != (m, records.NUM_AUG_LABELS):
      raise ValueError(f"aug_labels has shape {np.shape(aug_labels)}, expected {(m, 9)}")
    if np.shape(cifar_index) != (m,):
      raise ValueError(f"cifar_index has shape {np.shape(cifar_index)}, expected {(m,)}")
    if not sigma > 0:
      raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0 < set_size <= m:
      raise ValueError(f"set_size must be in [1, {m}] (the pool size), got {set_size}")
    self.clean_images = clean_images.astype(np.float32)   # float16 sums are ~5x slower
    self.aug_labels = np.asarray(aug_labels, np.float32)
    self.cifar_index = np.asarray(cifar_index, np.int32)
    self.sigma = float(sigma)
    self.set_size = int(set_size)
    self._classes = None
    if binary_labels is not None:
      binary_labels = np.asarray(binary_labels)
      if binary_labels.shape != (m,) or not np.isin(binary_labels, (-1, 1)).all():
        raise ValueError("binary_labels must be [M] with values in {-1, +1}")
      if set_size % 2:
        raise ValueError(f"a balanced set needs an even set_size, got {set_size}")
      self._classes = (np.flatnonzero(binary_labels < 0), np.flatnonzero(binary_labels > 0))
      short = [c.size for c in self._classes if c.size < set_size // 2]
      if short:
        raise ValueError(f"a class has only {short[0]} pool images, a balanced set needs "
                         f"{set_size // 2}")

  def draw_set(self, rng: np.random.Generator) -> np.ndarray:
    """Pool indices [set_size] of a fresh set, without replacement."""
    if self._classes is None:
      return rng.choice(self.clean_images.shape[0], self.set_size, replace=False)
    half = self.set_size // 2
    return np.concatenate([rng.choice(c, half, replace=False) for c in self._classes])

  def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
    members = self.draw_set(rng)
    mu = self.clean_images[members].sum(axis=0) / np.float64(members.size)
    x = rng.normal(0.0, self.sigma, records.IMAGE_SHAPE)
    noisy, r = postprocess_rscale(x, mu)
    j = members[rng.integers(self.set_size)]
    return {
        "noisy": np.clip(noisy, 0.0, 1.0).astype(np.float32),   # clip: float rounding only
        "clean": self.clean_images[j].copy(),
        "aug_labels": self.aug_labels[j],
        "cifar_index": self.cifar_index[j],
        "scale_r": np.float32(r),
    }


def make_noise_source(clean_images: np.ndarray, aug_labels: np.ndarray,
                      cifar_index: np.ndarray, sigma: float = NOISE_SIGMA,
                      set_size: int = NOISE_SET_SIZE,
                      binary_labels: np.ndarray | None = None) -> NoiseSource:
  """A `NoiseSource` over a pool of clean augmented images (see NoiseSource)."""
  return NoiseSource(clean_images, aug_labels, cifar_index, binary_labels=binary_labels,
                     sigma=sigma, set_size=set_size)


def noise_source_from_pairs(source: records.PairDataSource, *, pool_size: int = 10000,
                            seed: int = 0, sigma: float = NOISE_SIGMA,
                            set_size: int = NOISE_SET_SIZE) -> NoiseSource:
  """A self-contained `NoiseSource` whose pool is the dataset's own clean images.

  The pool takes up to `pool_size` distinct (run_id, cifar_index) clean images A(I) (one record
  each). Sets are balanced by the records' `label` (the matched candidate's y, a proxy for the
  image's binary class) when each class has set_size/2 pool images; with a smaller pool the set
  shrinks to the pool size and is drawn uniformly (logged).
  """
  index = source.index()
  pair_id = index["run_id"].astype(np.int64) * records.NUM_CIFAR_TRAIN + index["cifar_index"]
  _, first = np.unique(pair_id, return_index=True)
  rng = np.random.default_rng([int(seed), _POOL_STREAM])
  if first.size > pool_size:
    first = np.sort(rng.choice(first, pool_size, replace=False))
  parts = [source.read_batch(first[i:i + 4096]) for i in range(0, first.size, 4096)]
  pool = {k: np.concatenate([p[k] for p in parts]) for k in ("clean", "aug_labels",
                                                              "cifar_index", "label")}
  labels = np.where(pool["label"] < 0, -1, 1)
  balanced = set_size % 2 == 0 and min((labels < 0).sum(), (labels > 0).sum()) >= set_size // 2
  if not balanced:
    logging.warning("noise pool of %d images cannot give balanced sets of %d; drawing sets of "
                    "%d uniformly", first.size, set_size, min(set_size, first.size))
  return NoiseSource(pool["clean"], pool["aug_labels"], pool["cifar_index"],
                     binary_labels=labels if balanced else None, sigma=sigma,
                     set_size=set_size if balanced else min(set_size, first.size))


# ------------------------------------------------------------------------------------------
# The grain pipeline.
# ------------------------------------------------------------------------------------------


def num_noise_before(k: int, batch_size: int, noise_fraction: fractions.Fraction) -> int:
  """Noise examples in batches 0..k-1: floor(k·B·f), so every batch has floor or ceil of B·f
  and the long-run fraction is exactly f."""
  q = k * batch_size * noise_fraction
  return q.numerator // q.denominator


class BatchPlanDataset(grain.MapDataset):
  """Element k: {"index": k, "keys": record keys of batch k, "num_noise": its noise count}."""

  def __init__(self, plan: BalancedPlan, batch_size: int, noise_fraction: float,
               num_batches: int | None = None):
    super().__init__()
    self._plan = plan
    self._batch_size = int(batch_size)
    self._fraction = fractions.Fraction(noise_fraction).limit_denominator(10**6)
    self._num_batches = sys.maxsize if num_batches is None else int(num_batches)

  def __len__(self) -> int:
    return self._num_batches

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k = int(index)
    noise_start = num_noise_before(k, self._batch_size, self._fraction)
    num_noise = num_noise_before(k + 1, self._batch_size, self._fraction) - noise_start
    real_start = k * self._batch_size - noise_start
    keys = self._plan.keys(real_start, real_start + self._batch_size - num_noise)
    return {"index": k, "keys": keys, "num_noise": num_noise}

  def __str__(self) -> str:
    return f"BatchPlanDataset(batch_size={self._batch_size}, noise_fraction={self._fraction})"


class LoadBatch(grain.transforms.Map):
  """Plan element -> batch dict: decoded pairs + noise examples, permuted by (seed, k)."""

  def __init__(self, source: records.PairDataSource, noise_fn: NoiseFn | None, seed: int):
    self._source = source
    self._noise_fn = noise_fn
    self._seed = int(seed)

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    keys, n_noise = element["keys"], element["num_noise"]
    rng = np.random.default_rng([self._seed, _BATCH_STREAM, element["index"]])
    real = self._source.read_batch(keys)
    noise = [self._noise_fn(rng) for _ in range(n_noise)]

    def cat(name, dtype, shape):
      parts = [np.asarray(real[name], dtype)]
      if noise:
        parts.append(np.stack([np.asarray(e[name], dtype).reshape(shape) for e in noise]))
      return np.concatenate(parts)

    batch = {
        "noisy": cat("noisy", np.float32, records.IMAGE_SHAPE),
        "clean": cat("clean", np.float32, records.IMAGE_SHAPE),
        "aug_labels": cat("aug_labels", np.float32, (records.NUM_AUG_LABELS,)),
        "cifar_index": cat("cifar_index", np.int32, ()),
        "is_noise": np.concatenate([np.zeros(keys.size, bool), np.ones(n_noise, bool)]),
        "record_key": np.concatenate([keys, np.full(n_noise, -1, np.int64)]),
    }
    perm = rng.permutation(keys.size + n_noise)   # spread noise examples over device shards
    return {k: v[perm] for k, v in batch.items()}


def make_train_batches(data: str | os.PathLike | records.PairDataSource, batch_size: int,
                       seed: int, noise_fraction: float = NOISE_FRACTION, *,
                       target_per_image: float = TARGET_PER_IMAGE, noise_fn: NoiseFn | None = None,
                       noise_pool_size: int = 10000, noise_sigma: float = NOISE_SIGMA,
                       noise_set_size: int = NOISE_SET_SIZE,
                       num_batches: int | None = None) -> grain.MapDataset:
  """The balanced training stream as a random-access grain `MapDataset`: element k = batch k.

  Batch keys: "noisy" float32 [B,32,32,3] in [0,1], "clean" float32 [B,32,32,3],
  "aug_labels" float32 [B,9], "cifar_index" int32 [B], "is_noise" bool [B],
  "record_key" int64 [B] (-1 for noise examples). Batch k holds floor((k+1)·B·f) − floor(k·B·f)
  noise examples (exactly f in the long run) at random positions; its real entries are the
  next records of the balanced key sequence (`BalancedPlan`). Batch k is a pure function of
  (committed shards, seed, options, k).

  Args:
    data: a dataset directory (ledgered shards only) or a `PairDataSource`.
    batch_size: B.
    seed: non-negative int.
    noise_fraction: f in [0, 1).
    target_per_image: the expected records kept per image and epoch (11).
    noise_fn: `fn(rng: np.random.Generator) -> {"noisy", "clean", "aug_labels", "cifar_index"}`,
      one example; must be picklable for worker processes. Default:
      `noise_source_from_pairs` over the dataset's own clean images.
    noise_pool_size, noise_sigma, noise_set_size: for the default noise_fn.
    num_batches: the number of batches; None = unbounded.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= noise_fraction < 1:
    raise ValueError(f"noise_fraction must be in [0, 1), got {noise_fraction}")
  if num_batches is not None and num_batches < 0:
    raise ValueError(f"num_batches must be >= 0 or None, got {num_batches}")
  source = data if isinstance(data, records.PairDataSource) else records.PairDataSource(data)
  if len(source) == 0:
    raise ValueError(f"{data} holds no committed pairs")
  plan = BalancedPlan(source.cifar_index, seed, target_per_image)
  if noise_fraction > 0 and noise_fn is None:
    noise_fn = noise_source_from_pairs(source, pool_size=noise_pool_size, seed=seed,
                                       sigma=noise_sigma, set_size=noise_set_size)
  ds = BatchPlanDataset(plan, batch_size, noise_fraction, num_batches)
  return ds.map(LoadBatch(source, noise_fn, seed))


def _to_iter(batches: grain.MapDataset, num_workers: int, read_threads: int,
             prefetch_batches: int, worker_buffer_size: int) -> grain.IterDataset:
  if num_workers < 0:
    raise ValueError(f"num_workers must be >= 0, got {num_workers}")
  ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=prefetch_batches))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():   # grain's workers read absl flags (outside absl.app.run)
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=worker_buffer_size))
  return ds


def make_train_dataset(data: str | os.PathLike | records.PairDataSource, batch_size: int,
                       seed: int, noise_fraction: float = NOISE_FRACTION, *,
                       num_workers: int = 0, read_threads: int = 2, prefetch_batches: int = 4,
                       worker_buffer_size: int = 2, **kwargs) -> grain.IterDataset:
  """`make_train_batches(...)` as a grain `IterDataset` (threads, optional worker processes).

  Its iterators' grain state depends on num_workers; `make_train_stream` has a state that
  does not. Arguments as in `make_train_stream`.
  """
  batches = make_train_batches(data, batch_size, seed, noise_fraction, **kwargs)
  return _to_iter(batches, num_workers, read_threads, prefetch_batches, worker_buffer_size)


class TrainStream(grain.DatasetIterator):
  """Iterator over a batch `MapDataset` with the state {"next_batch": k}.

  Since batch k is a pure function of k, the state does not depend on threads or worker
  processes: a checkpoint taken with 4 workers resumes with 0. `set_state` reopens the grain
  pipeline at batch k. A grain `DatasetIterator`, so grain's orbax checkpoint handler
  (`grain.checkpoint.CheckpointSave/Restore`) also works. Call `close()` when done if workers
  are used.
  """

  def __init__(self, batches: grain.MapDataset, *, num_workers: int = 0, read_threads: int = 2,
               prefetch_batches: int = 4, worker_buffer_size: int = 2):
    super().__init__()
    self._batches = batches
    if num_workers < 0 or read_threads < 0 or prefetch_batches < 0 or worker_buffer_size < 1:
      raise ValueError("num_workers, read_threads, prefetch_batches must be >= 0 and "
                       "worker_buffer_size >= 1")
    self._options = (num_workers, read_threads, prefetch_batches, worker_buffer_size)
    self._next_batch = 0
    self._it = None

  def _open(self) -> None:
    batches = self._batches[self._next_batch:] if self._next_batch else self._batches
    self._it = iter(_to_iter(batches, *self._options))

  def _close_inner(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._it is None:
      self._open()
    batch = next(self._it)
    self._next_batch += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": self._next_batch}

  def set_state(self, state: Mapping[str, Any]) -> None:
    next_batch = int(state["next_batch"])
    if not 0 <= next_batch <= len(self._batches):
      raise ValueError(f"next_batch {next_batch} is outside [0, {len(self._batches)}]")
    self._close_inner()
    self._next_batch = next_batch

  def start_prefetch(self) -> None:
    if self._it is None:
      self._open()
    self._it.start_prefetch()

  def close(self) -> None:
    if getattr(self, "_it", None) is not None:
      self._close_inner()
    super().close()

  def __str__(self) -> str:
    return f"TrainStream(next_batch={self._next_batch})"


def make_train_stream(data: str | os.PathLike | records.PairDataSource, batch_size: int,
                      seed: int, noise_fraction: float = NOISE_FRACTION, *,
                      num_workers: int = 0, read_threads: int = 2, prefetch_batches: int = 4,
                      worker_buffer_size: int = 2, **kwargs) -> TrainStream:
  """The restorer's training iterator: balanced pairs plus noise examples (SPEC §6).

  Args:
    data: a dataset directory (ledgered shards only) or a `PairDataSource`.
    batch_size: B.
    seed: non-negative int.
    noise_fraction: f in [0, 1) (SPEC: 0.1).
    num_workers: grain worker processes (`mp_prefetch`); 0 reads in this process. With
      workers, build the stream under `if __name__ == "__main__":` (spawned processes) and
      pass a picklable noise_fn.
    read_threads: grain threads per process, each assembling whole batches (0 = in the
      calling thread).
    prefetch_batches: batches buffered per process (~12.6 MB each at B = 512; grain's default
      of 500 elements would hold gigabytes).
    worker_buffer_size: batches buffered per worker process.
    **kwargs: `make_train_batches` options (target_per_image, noise_fn, noise_pool_size,
      noise_sigma, noise_set_size, num_batches).

  Returns:
    A `TrainStream`: `next(stream)` -> batch dict (see `make_train_batches`);
    `get_state()` -> {"next_batch": k}; `set_state(state)` resumes exactly.
  """
  batches = make_train_batches(data, batch_size, seed, noise_fraction, **kwargs)
  return TrainStream(batches, num_workers=num_workers, read_threads=read_threads,
                     prefetch_batches=prefetch_batches, worker_buffer_size=worker_buffer_size)
