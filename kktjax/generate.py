"""Mass generation of the pair dataset: victims, KKT attacks, confident matches (SPEC §6).

A *run* is one (seed, run_id). Every random choice of a run derives from those two numbers
(`seeding.stream_key`), so a run recomputed alone gives the same pairs, whatever the batch size,
the number of devices or hosts, and however often the job was killed and resumed:

  1. sample 150 + 150 CIFAR-10 training images ("data" key); phase 1 from all 50,000, phase 2
     from the `phase2_pool` least-seen images (ties random, 150 per class);
  2. augment them with EDM's AugmentPipe ("augment" key); μ is the mean of the augmented set;
  3. train a victim (Adadelta recipe, "victim" key);
  4. attack it with the "generate" recipe, one run per victim ("attack" key);
  5. post-process each of the 11 snapshots (r-scaling), SSIM it against the 300 augmented
     training images, apply the confident-match rule (SPEC §4.3) and pair all 11 snapshots of
     each confident candidate with its image.

Parallelism. Runs are vmapped in batches of `runs_per_device` × local devices; the batch's
leading run axis is sharded over a `Mesh` of the local devices (axis "runs"), so each device
trains and attacks its own runs. Hosts (jax.distributed) split the run ids round-robin: process
i of P takes i, i + P, …, and writes its own directory `pairs/process-<i>`.

Exactly once. A batch commits through `records.PairWriter` (run log, atomic shard, ledger line).
On restart the ledgers of all process directories tell which runs are finished; the others are
redone, and orphan shards of killed batches are removed before anything is written.

Phase 2 and determinism. The counts z_j behind "least seen" are the pairs of all runs whose id
is below the start of the run's count block (blocks of `phase2_update_every` run ids). Batches
never straddle a block, and blocks run in order, so a phase-2 run sees the same counts whatever
the batch size. With P hosts, each host contributes its runs' counts and an all-gather sums
them at every block start (the documented per-batch deviation of SPEC §6).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
import subprocess
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kktjax import augment
from kktjax import data as data_lib
from kktjax import kkt
from kktjax import match
from kktjax import metrics
from kktjax import records
from kktjax import seeding
from kktjax import victim

PAIRS_DIR = "pairs"
CONFIG_NAME = "generate_config.json"
STATS_NAME = "stats.json"
SESSIONS_NAME = "sessions.jsonl"
MESH_AXIS = "runs"
# Bin edges of the per-snapshot histogram of b1 (best SSIM of each candidate) in the run log;
# scores below 0 fall into the first bin.
B1_HIST_EDGES = np.linspace(0.0, 1.0, 21)


# ------------------------------------------------------------------------------------------
# Layout of a workdir.
# ------------------------------------------------------------------------------------------
def process_dir(workdir: str, process_index: int) -> str:
  """The dataset directory written by one generator process."""
  return os.path.join(workdir, PAIRS_DIR, f"process-{process_index:03d}")


def dataset_dirs(workdir: str) -> list[str]:
  """Every process directory of a workdir that has a ledger, sorted."""
  pattern = os.path.join(workdir, PAIRS_DIR, "process-*", records.LEDGER_NAME)
  return sorted(os.path.dirname(p) for p in glob.glob(pattern))


def shard_paths(workdir: str) -> list[str]:
  """The committed shards of all process directories (orphans excluded)."""
  return [p for d in dataset_dirs(workdir) for p, _ in records.ledgered_shards(d)]


def open_dataset(workdir: str) -> records.PairDataSource:
  """A random-access source over every committed pair of a generation workdir."""
  return records.PairDataSource(shard_paths(workdir))


def finished_runs(workdir: str) -> set[int]:
  """Run ids committed in any process directory."""
  out = set()
  for d in dataset_dirs(workdir):
    out |= records.Ledger(os.path.join(d, records.LEDGER_NAME)).finished_runs()
  return out


def run_entries(workdir: str) -> list[dict]:
  """The run log entries of all finished runs (last entry per run), sorted by run id."""
  out = []
  for d in dataset_dirs(workdir):
    done = records.Ledger(os.path.join(d, records.LEDGER_NAME)).finished_runs()
    out += records.RunLog(os.path.join(d, records.RUN_LOG_NAME)).entries(done)
  return sorted(out, key=lambda e: e["run_id"])


# ------------------------------------------------------------------------------------------
# Config checks.
# ------------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f"config.{name} must be a positive integer; got {value!r}")
  return int(value)


def validate_config(config) -> None:
  """One-line ValueErrors for a config that cannot run (before any JAX work)."""
  for name in ("n_per_class", "phase2_pool", "phase2_update_every", "runs_per_device",
               "ssim_chunk"):
    _positive_int(name, config[name])
  for name in ("phase1_runs", "phase2_runs"):
    if int(config[name]) != config[name] or config[name] < 0:
      raise ValueError(f"config.{name} must be a non-negative integer; got {config[name]!r}")
  if config.phase2_pool < 2 * config.n_per_class:
    raise ValueError(f"config.phase2_pool ({config.phase2_pool}) must hold at least "
                     f"2·n_per_class = {2 * config.n_per_class} images")
  v, a, mt = config.victim, config.attack, config.match
  _positive_int("victim.width", v.width)
  _positive_int("victim.chunk_epochs", v.chunk_epochs)
  if int(v.epochs) != v.epochs or v.epochs < 0:
    raise ValueError(f"config.victim.epochs must be a non-negative integer; got {v.epochs!r}")
  if v.recipe not in victim.RECIPES:
    raise ValueError(f"config.victim.recipe {v.recipe!r} is not one of {victim.RECIPES}")
  if v.init not in victim.INIT_SCHEMES:
    raise ValueError(f"config.victim.init {v.init!r} is not one of {victim.INIT_SCHEMES}")
  if v.dtype not in ("float32", "float64"):
    raise ValueError(f"config.victim.dtype must be 'float32' or 'float64'; got {v.dtype!r}")
  if v.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("config.victim.dtype float64 needs jax_enable_x64")
  _positive_int("attack.m", a.m)
  _positive_int("attack.num_iters", a.num_iters)
  snaps = tuple(a.snapshot_iters)
  if not snaps or list(snaps) != sorted(set(snaps)) or snaps[0] < 1 or (
      snaps[-1] > a.num_iters) or any(int(s) != s for s in snaps):
    raise ValueError(f"config.attack.snapshot_iters must be strictly increasing integers in "
                     f"[1, num_iters={a.num_iters}]; got {snaps}")
  for name in ("alpha", "lambda_min", "sigma", "lr_x", "lr_lambda"):
    if not np.isfinite(a[name]) or a[name] < 0:
      raise ValueError(f"config.attack.{name} must be finite and >= 0; got {a[name]!r}")
  if mt.postprocess not in match.POSTPROCESS_MODES:
    raise ValueError(f"config.match.postprocess {mt.postprocess!r} is not one of "
                     f"{match.POSTPROCESS_MODES}")
  if mt.ssim_variant != "haim" and mt.ssim_variant != "wang":
    raise ValueError(f"config.match.ssim_variant {mt.ssim_variant!r} is not 'haim' or 'wang'")
  augment.as_config(config.augment)   # raises on unknown fields


def _fingerprint(config_dict: dict) -> dict:
  from kktjax.configs import generate as generate_config
  return {k: v for k, v in config_dict.items() if k not in generate_config.RUNTIME_FIELDS}


def config_fingerprint(config) -> dict:
  """The config without its runtime fields: what must not change between a job and its resume."""
  return _fingerprint(json.loads(config.to_json()))


def _check_or_write_config(workdir: str, config, has_runs: bool) -> None:
  """Refuses to resume runs made with another config; records the resolved config."""
  path = os.path.join(workdir, CONFIG_NAME)
  if has_runs and os.path.exists(path):
    with open(path) as f:
      old = _fingerprint(json.load(f))
    new = config_fingerprint(config)
    if old != new:
      diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise ValueError(f"{workdir!r} holds runs made with another config (fields {diff} "
                       "differ); use a new workdir or the same config")
  if jax.process_index() == 0:
    _write_json(path, json.loads(config.to_json()))


# ------------------------------------------------------------------------------------------
# Sampling (host side).
# ------------------------------------------------------------------------------------------
def run_phase(config, run_id: int) -> int:
  return 1 if run_id < config.phase1_runs else 2


def count_block_start(config, run_id: int) -> int:
  """First run id of the phase-2 count block holding `run_id` (phase 1: 0)."""
  if run_id < config.phase1_runs:
    return 0
  b = (run_id - config.phase1_runs) // config.phase2_update_every
  return config.phase1_runs + b * config.phase2_update_every


def least_seen_pool(rng: np.random.Generator, counts: np.ndarray, labels: np.ndarray,
                    pool_size: int, n_per_class: int) -> np.ndarray:
  """The `pool_size` least-seen images, ties broken at random (SPEC §6, phase 2).

  If the pool holds fewer than `n_per_class` images of a binary class, the next least-seen
  images of that class are added, so that each class can take `n_per_class`.

  Args:
    rng: the run's generator.
    counts: int [num_images] pairs per CIFAR image so far.
    labels: CIFAR-10 labels [num_images].
    pool_size: images in the pool (4,000 in the paper).
    n_per_class: images per binary class the run will draw.

  Returns:
    Sorted int64 indices of the pool.
  """
  counts = np.asarray(counts)
  if counts.shape != np.shape(labels):
    raise ValueError(f"counts {counts.shape} and labels {np.shape(labels)} differ in length")
  order = np.lexsort((rng.random(counts.size), counts))   # by count, then random
  pool = order[:pool_size]
  y = data_lib.binary_labels(labels)
  extra = []
  for cls in (-1, 1):
    short = n_per_class - int(np.sum(y[pool] == cls))
    if short > 0:
      rest = order[pool_size:]
      extra.append(rest[y[rest] == cls][:short])
  return np.sort(np.concatenate([pool] + extra)).astype(np.int64)


def sample_run_images(config, run_id: int, labels: np.ndarray,
                      counts: np.ndarray | None = None) -> np.ndarray:
  """The CIFAR indices [2·n_per_class] of one run: vehicles first, then animals, each sorted.

  Phase-1 runs draw a uniform balanced set; phase-2 runs draw it from `least_seen_pool`, with
  `counts` the per-image pair counts of all runs before the run's count block.
  """
  rng = data_lib.numpy_rng(seeding.stream_key(config.seed, int(run_id), "data"))
  if run_phase(config, run_id) == 1:
    return data_lib.balanced_sample(rng, labels, config.n_per_class)
  if counts is None:
    raise ValueError(f"run {run_id} is a phase-2 run and needs the per-image counts")
  pool = least_seen_pool(rng, counts, labels, config.phase2_pool, config.n_per_class)
  return data_lib.balanced_sample(rng, labels, config.n_per_class, pool)


class SeenCounts:
  """Pairs per CIFAR image, from the runs of this process, as of a run-id horizon.

  `before(s)` returns the counts of the pairs of runs with id < s. Horizons only grow; runs at
  or past the horizon wait in `pending` until a later horizon passes them.
  """

  def __init__(self, num_images: int, horizon: int = 0):
    self.counts = np.zeros(num_images, np.int64)
    self.horizon = horizon
    self._pending_runs: list[np.ndarray] = []
    self._pending_images: list[np.ndarray] = []

  def add(self, run_ids: np.ndarray, cifar_index: np.ndarray) -> None:
    run_ids, cifar_index = np.asarray(run_ids), np.asarray(cifar_index)
    now = run_ids < self.horizon
    self.counts += np.bincount(cifar_index[now], minlength=self.counts.size)
    if (~now).any():
      self._pending_runs.append(run_ids[~now])
      self._pending_images.append(cifar_index[~now])

  def before(self, horizon: int) -> np.ndarray:
    if horizon < self.horizon:
      raise ValueError(f"count horizon moved back from {self.horizon} to {horizon}")
    self.horizon = horizon
    if self._pending_runs:
      runs, images = np.concatenate(self._pending_runs), np.concatenate(self._pending_images)
      self._pending_runs, self._pending_images = [], []
      self.add(runs, images)
    return self.counts.copy()


def _global_counts(local: np.ndarray) -> np.ndarray:
  """Sums the per-process counts over all processes (an all-gather; a barrier too)."""
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)


# ------------------------------------------------------------------------------------------
# Batching.
# ------------------------------------------------------------------------------------------
def plan_segments(config, run_ids: Sequence[int]) -> list[tuple[int, int, list[int]]]:
  """Splits run ids into (phase, count horizon, runs): phase 1, then each phase-2 count block.

  Every phase-2 block of the whole schedule appears (possibly with no runs), so that all
  processes meet at the same count exchanges.
  """
  total = config.phase1_runs + config.phase2_runs
  run_ids = np.sort(np.asarray(run_ids, np.int64))
  cut = lambda lo, hi: run_ids[np.searchsorted(run_ids, lo):np.searchsorted(run_ids, hi)].tolist()
  segs = [(1, 0, cut(0, config.phase1_runs))]
  for start in range(config.phase1_runs, total, config.phase2_update_every):
    segs.append((2, start, cut(start, min(start + config.phase2_update_every, total))))
  return segs


def _chunks(items: list[int], size: int) -> list[list[int]]:
  return [items[i:i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------
# Device functions.
# ------------------------------------------------------------------------------------------
def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over the local devices with the run axis "runs"."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (MESH_AXIS,))


class DeviceFns:
  """The jitted, run-sharded functions of one generation job (one compilation per shape).

  Every batched argument and result has the run axis first and is sharded over the mesh axis
  "runs" (explicit `in_shardings`/`out_shardings`), so the vmapped computations partition over
  the local devices; scalars (chunk lengths) are replicated.
  """

  def __init__(self, config, mesh: Mesh):
    self.sharding = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
    self.replicated = NamedSharding(mesh, PartitionSpec())
    v, a, mt = config.victim, config.attack, config.match
    s, rep = self.sharding, self.replicated
    self.dtype = jnp.dtype(v.dtype)
    self.num_images = 2 * config.n_per_class
    dtype = self.dtype
    n = self.num_images

    def prepare(aug):
      """aug [K·n, H, W, C] -> x [K, n, D] (x − μ, C,H,W), μ [K, H, W, C], targets [0, 1]."""
      aug = aug.reshape((-1, n) + aug.shape[1:])
      mu = jnp.mean(aug, axis=1)
      x = data_lib.flatten_chw(aug - mu[:, None]).astype(dtype)
      return x, mu, jnp.clip(aug, 0.0, 1.0)

    def init_one(key):
      return victim.init_params(key, v.width, first_layer_bias=v.first_layer_bias,
                                init=v.init, w1_std=v.w1_std, dtype=dtype)

    victim_opt = victim.make_optimizer(v.recipe)
    attack_opt = kkt.make_optimizer("generate")
    dim = int(np.prod(data_lib.IMAGE_SHAPE))

    def init_attack(key, hp):
      return kkt.init_run_state(key, hp, a.m, dim, dtype, attack_opt)

    per_run = jax.vmap(functools.partial(kkt.attack_step, attack_opt), in_axes=(0, None))
    per_victim = jax.vmap(per_run, in_axes=(0, 0))

    def attack_chunk(state, params, num_iters):
      return jax.lax.fori_loop(0, num_iters, lambda _, st: per_victim(st, params), state)

    def score_one(x, mu, targets):
      """One run's candidates [N, D] -> (images f16 [N,H,W,C], r [N], SSIM [N, n])."""
      img = data_lib.unflatten_chw(x).astype(jnp.float32)
      if mt.postprocess == "rscale":
        img, r = match.postprocess_rscale(img, mu)
      else:
        img, r = match.postprocess(img, mu, mt.postprocess), jnp.full(img.shape[:1], jnp.nan)
      scores = metrics.ssim_matrix(img, targets, mt.ssim_variant, config.ssim_chunk)
      return img.astype(jnp.float16), r.astype(jnp.float32), scores.astype(jnp.float32)

    def score_snapshot(x, mu, targets):
      return jax.vmap(score_one)(x[:, 0], mu, targets)   # R = 1 attack run per victim

    self.prepare = jax.jit(prepare, in_shardings=s, out_shardings=s)
    self.init_victims = jax.jit(jax.vmap(init_one), in_shardings=s, out_shardings=s)
    self.init_train = jax.jit(
        jax.vmap(lambda p, lr: victim.init_state(p, victim_opt, lr)), in_shardings=s,
        out_shardings=s)
    self._train_epochs = lambda n_ep: jax.jit(
        jax.vmap(lambda st, x, y: victim.train_epochs(victim_opt, st, x, y, n_ep)),
        in_shardings=s, out_shardings=s, donate_argnums=0)
    self._trainers = {}
    self.evaluate = jax.jit(jax.vmap(victim.evaluate), in_shardings=s, out_shardings=s)
    self.init_attack = jax.jit(jax.vmap(jax.vmap(init_attack)), in_shardings=s,
                               out_shardings=s)
    self.attack_chunk = jax.jit(attack_chunk, in_shardings=(s, s, rep), out_shardings=s,
                                donate_argnums=0)
    self.score_snapshot = jax.jit(score_snapshot, in_shardings=s, out_shardings=s)

  def trainer(self, num_epochs: int):
    if num_epochs not in self._trainers:
      self._trainers[num_epochs] = self._train_epochs(num_epochs)
    return self._trainers[num_epochs]

  def put(self, tree):
    """Host arrays -> device arrays sharded over runs (leading axis)."""
    return jax.device_put(tree, self.sharding)


_DEVICE_FNS: dict[tuple, DeviceFns] = {}


def device_fns(config, mesh: Mesh) -> DeviceFns:
  """The `DeviceFns` of a config and mesh, cached: only the fields that shape the compiled
  functions form the key, so runs with other seeds, learning rates or schedules reuse them."""
  v, a, mt = config.victim, config.attack, config.match
  key = (config.n_per_class, config.ssim_chunk, v.width, v.first_layer_bias, v.init,
         float(v.w1_std), v.recipe, v.dtype, a.m, mt.postprocess, mt.ssim_variant,
         tuple(d.id for d in mesh.devices.flat))
  if key not in _DEVICE_FNS:
    _DEVICE_FNS[key] = DeviceFns(config, mesh)
  return _DEVICE_FNS[key]


# ------------------------------------------------------------------------------------------
# One batch of runs.
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BatchResult:
  pairs: dict[str, np.ndarray]
  entries: list[dict]
  devices: int          # devices the batch's arrays were spread over
  shard_runs: int       # runs per device shard


def _stack_keys(keys: Sequence[jax.Array]) -> np.ndarray:
  return np.stack([np.asarray(jax.random.key_data(k)) if jnp.issubdtype(
      k.dtype, jax.dtypes.prng_key) else np.asarray(k) for k in keys])


def process_batch(config, fns: DeviceFns, cifar: data_lib.Cifar10, run_ids: Sequence[int],
                  batch_size: int, counts: np.ndarray | None = None,
                  code_version: str = "") -> BatchResult:
  """Runs one batch: sampling, augmentation, victims, attack, scoring, matching, pairs.

  Args:
    config: the generation config.
    fns: the job's `DeviceFns`.
    cifar: the CIFAR-10 training split.
    run_ids: the batch's runs (all phase 1, or all in one phase-2 count block).
    batch_size: K; the batch is padded to K with copies of its last run, whose results are
      dropped, so every batch has one shape.
    counts: per-image pair counts before the batch's count block (phase 2 only).
    code_version: stored in the run entries.

  Returns:
    A BatchResult with the pairs (ordered by run, candidate, snapshot) and one entry per run.
  """
  t0 = time.time()
  run_ids = [int(r) for r in run_ids]
  real = len(run_ids)
  if not 1 <= real <= batch_size:
    raise ValueError(f"a batch needs 1..{batch_size} runs; got {real}")
  padded = run_ids + [run_ids[-1]] * (batch_size - real)
  v, a, mt = config.victim, config.attack, config.match
  n, m = fns.num_images, a.m
  snaps = tuple(int(t) for t in a.snapshot_iters)
  seed = int(config.seed)

  # Host: each run's images and keys.
  idx = np.stack([sample_run_images(config, r, cifar.labels, counts) for r in padded])  # [K, n]
  y = data_lib.binary_labels(cifar.labels[idx]).astype(fns.dtype)                       # [K, n]
  images = cifar.images[idx.reshape(-1)]                                        # [K·n, H, W, C]
  aug_keys = np.concatenate([np.asarray(jax.random.split(
      seeding.stream_key(seed, r, "augment"), n)) for r in padded])
  victim_keys = _stack_keys([seeding.stream_key(seed, r, "victim") for r in padded])
  attack_keys = _stack_keys([seeding.stream_key(seed, r, "attack") for r in padded])[:, None]
  hp = kkt.AttackHParams(*(np.full((batch_size, 1), float(a[k]), fns.dtype) for k in (
      "alpha", "lambda_min", "sigma", "lr_x", "lr_lambda")))

  # Device: augmentation, victims.
  aug, aug_labels = augment.augment_batch(fns.put(aug_keys), fns.put(images),
                                          augment.as_config(config.augment))
  x, mu, targets = fns.prepare(aug)
  y_dev = fns.put(y)
  state = fns.init_train(fns.init_victims(fns.put(victim_keys)),
                         fns.put(np.full((batch_size,), v.learning_rate, fns.dtype)))
  done = 0
  while done < v.epochs:
    step = min(v.chunk_epochs, v.epochs - done)
    state, _ = fns.trainer(step)(state, x, y_dev)
    done += step
  vm = fns.evaluate(state.params, x, y_dev)
  params = state.params

  # Device: the attack, scored at every snapshot. The next chunk is dispatched before the
  # previous snapshot's scores are fetched, so transfers overlap compute.
  astate = fns.init_attack(fns.put(attack_keys), fns.put(hp))
  imgs = np.zeros((batch_size, len(snaps), 2 * m) + data_lib.IMAGE_SHAPE, np.float16)
  scale_r = np.zeros((batch_size, len(snaps), 2 * m), np.float32)
  scores = np.zeros((batch_size, len(snaps), 2 * m, n), np.float32)
  pending, done = None, 0
  for s, t in enumerate(snaps):
    astate = fns.attack_chunk(astate, params, jnp.asarray(t - done, jnp.int32))
    done = t
    if pending is not None:
      imgs[:, s - 1], scale_r[:, s - 1], scores[:, s - 1] = jax.device_get(pending)
    pending = fns.score_snapshot(astate.x, mu, targets)
  imgs[:, -1], scale_r[:, -1], scores[:, -1] = jax.device_get(pending)
  devices = len(params["W1"].sharding.device_set)
  shard_runs = params["W1"].addressable_shards[0].data.shape[0]

  # Host: matching and pairs.
  status, akkt, aloss, steps = jax.device_get(
      (astate.status[:, 0], astate.loss_kkt[:, 0], astate.loss[:, 0], astate.step[:, 0]))
  vm = jax.device_get(vm)
  failed = np.asarray(jax.device_get(state.failed)) | ~np.isfinite(np.asarray(vm.loss))
  aug_h, aug_labels_h = jax.device_get((aug, aug_labels))
  aug_h = aug_h.reshape((batch_size, n) + data_lib.IMAGE_SHAPE)
  aug_labels_h = aug_labels_h.reshape(batch_size, n, -1)
  cm = jax.device_get(match.confident_matches(np.swapaxes(scores, 1, 2), mt.threshold, mt.gap))
  b1 = scores.max(axis=-1)   # [K, S, N]
  hist = np.stack([np.stack([np.histogram(np.clip(b1[k, s], 0.0, 1.0), B1_HIST_EDGES)[0]
                             for s in range(len(snaps))]) for k in range(batch_size)])
  elapsed = time.time() - t0

  parts, entries = [], []
  labels_c = np.where(np.arange(2 * m) < m, -1, 1).astype(np.int8)
  for k, r in enumerate(run_ids):
    diverged = bool(status[k] != kkt.RUNNING)
    ok = not failed[k] and not diverged
    cand = np.nonzero(cm.matched[k])[0] if ok else np.zeros(0, np.int64)
    if cand.size:
      c = np.repeat(cand, len(snaps))
      si = np.tile(np.arange(len(snaps)), cand.size)
      tgt = cm.target[k][c]
      parts.append({
          "noisy": imgs[k, si, c], "clean": aug_h[k, tgt], "cifar_index": idx[k, tgt],
          "aug_labels": aug_labels_h[k, tgt], "run_id": np.full(c.size, r, np.int64),
          "candidate": c.astype(np.int16), "label": labels_c[c],
          "snapshot_iter": np.asarray(snaps, np.int32)[si],
          "ssim": scores[k, si, c, tgt], "match_ssim": cm.best[k][c],
          "margin": cm.margin[k][c], "scale_r": scale_r[k, si, c],
          "phase": np.full(c.size, run_phase(config, r), np.uint8),
          "seed": np.full(c.size, seed, np.uint32)})
    entries.append({
        "run_id": r, "seed": seed, "phase": run_phase(config, r),
        "count_horizon": count_block_start(config, r) if run_phase(config, r) == 2 else None,
        "cifar_indices": idx[k], "aug_labels": np.round(aug_labels_h[k], 6),
        "victim": {"loss": float(vm.loss[k]), "train_error": float(vm.train_error[k]),
                   "min_margin": float(vm.min_margin[k]), "failed": bool(failed[k]),
                   "epochs": int(v.epochs), "width": int(v.width), "recipe": v.recipe},
        "attack": {"recipe": "generate", "m": int(m), "num_iters": int(a.num_iters),
                   "alpha": float(a.alpha), "lambda_min": float(a.lambda_min),
                   "sigma": float(a.sigma), "lr_x": float(a.lr_x),
                   "lr_lambda": float(a.lr_lambda), "steps": int(steps[k]),
                   "loss": float(aloss[k]), "loss_kkt": float(akkt[k])},
        "diverged": diverged,
        "num_confident": int(cand.size),
        "num_conflicts": int(np.sum(cm.conflict[k][cand])) if cand.size else 0,
        "num_pairs": int(cand.size * len(snaps)),
        "b1_hist": hist[k], "snapshot_iters": list(snaps),
        "time_s": elapsed / real, "batch_size": batch_size, "code_version": code_version})
  pairs = ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts
           else records.empty_pairs(0))
  return BatchResult(pairs, entries, devices, shard_runs)


# ------------------------------------------------------------------------------------------
# The job.
# ------------------------------------------------------------------------------------------
def code_version() -> str:
  """The git commit of the package (with "-dirty" if modified), else the package version."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           check=True, capture_output=True, text=True, timeout=10).stdout.strip()
    return head + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    try:
      from importlib import metadata
      return f"kktjax-{metadata.version('kktjax')}"
    except Exception:  # pylint: disable=broad-except
      return "unknown"


def remove_orphans(directory: str) -> list[str]:
  """Deletes shards the ledger does not name and temp files of killed writes; returns them."""
  ledger = records.Ledger(os.path.join(directory, records.LEDGER_NAME))
  keep = {e["file"] for e in ledger.latest().values()}
  gone = []
  for path in (glob.glob(os.path.join(directory, "pairs-*.array_record")) +
               glob.glob(os.path.join(directory, ".pairs-*.tmp-*"))):
    if os.path.basename(path) not in keep:
      os.remove(path)
      gone.append(path)
  return gone


def _load_counts(workdir: str, num_images: int, horizon: int, process_index: int,
                 process_count: int) -> SeenCounts:
  """This process's share (run_id ≡ process_index mod P) of the committed pairs' counts."""
  counts = SeenCounts(num_images, horizon)
  for path in shard_paths(workdir):
    index = records.read_index(path)
    mine = index["run_id"] % process_count == process_index
    counts.add(index["run_id"][mine], index["cifar_index"][mine])
  return counts


def dataset_stats(workdir: str, num_images: int = records.NUM_CIFAR_TRAIN) -> dict:
  """Totals of a generation workdir over all committed runs (all process directories)."""
  entries = run_entries(workdir)
  z = np.zeros(num_images, np.int64)
  for path in shard_paths(workdir):
    z += np.bincount(records.read_index(path)["cifar_index"], minlength=num_images)
  runs, pairs = len(entries), int(z.sum())
  by_phase = {p: [e for e in entries if e["phase"] == p] for p in (1, 2)}
  return {
      "runs": runs, "pairs": pairs, "pairs_per_run": pairs / runs if runs else 0.0,
      "images_covered": int(np.sum(z > 0)),
      "runs_phase1": len(by_phase[1]), "runs_phase2": len(by_phase[2]),
      "pairs_phase1": sum(e["num_pairs"] for e in by_phase[1]),
      "pairs_phase2": sum(e["num_pairs"] for e in by_phase[2]),
      "confident_candidates": sum(e["num_confident"] for e in entries),
      "conflicts": sum(e["num_conflicts"] for e in entries),
      "runs_with_matches": sum(e["num_confident"] > 0 for e in entries),
      "failed_victims": sum(e["victim"]["failed"] for e in entries),
      "diverged_runs": sum(e["diverged"] for e in entries),
      "victims_not_separating": sum(e["victim"]["train_error"] > 0 for e in entries),
  }


def _write_json(path: str, obj: dict) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=records._json_default)  # pylint: disable=protected-access
  os.replace(tmp, path)


def run(config, workdir: str, *, cifar: data_lib.Cifar10 | None = None,
        devices: Sequence[Any] | None = None, max_batches: int | None = None) -> dict:
  """Generates (or resumes) the pair dataset of `config` in `workdir`.

  Args:
    config: a `configs/generate.py` config.
    workdir: output directory: `generate_config.json`, `stats.json` and
      `pairs/process-<i>/` (ledger.jsonl, runs.jsonl, pairs-*.array_record).
    cifar: the CIFAR-10 training split; by default loaded with `data.load_cifar10` (tests pass
      small in-memory arrays).
    devices: local devices to shard runs over; default all of `jax.local_devices()`.
    max_batches: stop after this many batches (for tests and timing); None = all.

  Returns:
    The stats dict also written to `stats.json` (and appended to the process directory's
    `sessions.jsonl`): dataset totals (runs, pairs, pairs/run, images covered, failed victims,
    diverged runs, conflicts) and this session's throughput (runs/s, pairs/s).
  """
  validate_config(config)
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  pidx, pcount = jax.process_index(), jax.process_count()
  total = config.phase1_runs + config.phase2_runs
  finished = finished_runs(workdir)
  _check_or_write_config(workdir, config, has_runs=bool(finished))
  if cifar is None:
    cifar = data_lib.load_cifar10("train", config.data_dir or None, config.cache_dir or None)
  if np.ndim(cifar.images) != 4 or np.shape(cifar.images)[1:] != data_lib.IMAGE_SHAPE or (
      len(cifar.images) != len(cifar.labels)):
    raise ValueError(f"cifar must hold images [N, 32, 32, 3] and labels [N]; got "
                     f"{np.shape(cifar.images)} and {np.shape(cifar.labels)}")
  num_images = len(cifar.labels)

  writer = records.PairWriter(process_dir(workdir, pidx))
  remove_orphans(writer.directory)
  todo = [r for r in range(pidx, total, pcount) if r not in finished]
  segments = plan_segments(config, todo)
  mesh = make_mesh(devices)
  batch_size = config.runs_per_device * mesh.size
  fns = device_fns(config, mesh)
  counts = None
  if config.phase2_runs and (pcount > 1 or any(r >= config.phase1_runs for r in todo)):
    counts = _load_counts(workdir, num_images, config.phase1_runs, pidx, pcount)
  version = code_version()

  from tqdm import tqdm
  bar = tqdm(total=len(todo), unit="run", disable=not config.progress, dynamic_ncols=True,
             desc=f"generate (process {pidx}/{pcount}, {mesh.size} devices × "
                  f"{config.runs_per_device} runs)")
  session = {"runs": 0, "pairs": 0, "batches": 0, "first_batch_s": None}
  t_loop = time.time()
  precision = (jax.default_matmul_precision(config.matmul_precision)
               if config.matmul_precision else contextlib.nullcontext())
  stopped = False
  with precision:
    for phase, horizon, runs in segments:
      seg_counts = None
      if phase == 2 and (runs or pcount > 1):
        seg_counts = _global_counts(counts.before(horizon))
      for batch in _chunks(runs, batch_size):
        if max_batches is not None and session["batches"] >= max_batches:
          stopped = True
          break
        t0 = time.time()
        res = process_batch(config, fns, cifar, batch, batch_size, seg_counts, version)
        writer.write_batch(batch[0], res.pairs, run_ids=batch, run_entries=res.entries,
                           meta={"phase": phase, "count_horizon": horizon,
                                 "devices": res.devices, "runs_per_shard": res.shard_runs,
                                 "batch_size": batch_size, "process": pidx})
        if counts is not None:
          counts.add(res.pairs["run_id"], res.pairs["cifar_index"])
        session["runs"] += len(batch)
        session["pairs"] += len(res.pairs["run_id"])
        session["batches"] += 1
        if session["first_batch_s"] is None:
          session["first_batch_s"] = time.time() - t0
        elapsed = time.time() - t_loop
        bar.update(len(batch))
        bar.set_postfix(pairs=session["pairs"], pairs_per_s=f"{session['pairs'] / elapsed:.1f}")
      if stopped and pcount == 1:
        break
  bar.close()
  elapsed = time.time() - t_loop
  steady_runs = session["runs"] - min(batch_size, session["runs"])
  steady_s = elapsed - (session["first_batch_s"] or 0.0)
  if pcount > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("kktjax.generate.done")
  stats = dataset_stats(workdir, max(num_images, records.NUM_CIFAR_TRAIN))
  stats.update({
      "runs_planned": total, "complete": len(finished_runs(workdir)) == total,
      "session_runs": session["runs"], "session_pairs": session["pairs"],
      "session_seconds": elapsed, "setup_seconds": t_loop - t_start,
      "runs_per_s": session["runs"] / elapsed if elapsed > 0 else 0.0,
      "pairs_per_s": session["pairs"] / elapsed if elapsed > 0 else 0.0,
      "runs_per_s_steady": steady_runs / steady_s if steady_runs and steady_s > 0 else None,
      "devices": mesh.size, "processes": pcount, "runs_per_device": config.runs_per_device,
      "batch_size": batch_size, "code_version": version,
  })
  _write_json(os.path.join(writer.directory, STATS_NAME), stats)
  records.JsonLines(os.path.join(writer.directory, SESSIONS_NAME)).append(
      dict(stats, time=time.time()))   # stats.json holds the latest session; this, all of them
  if pidx == 0:
    _write_json(os.path.join(workdir, STATS_NAME), stats)
  return stats
