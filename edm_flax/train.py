"""Training loop of the conditional EDM (DDPM++) restorer.

Small pure functions in the style of flax's imagenet example and big_vision: the model, the
learning-rate and EMA schedules, the optimiser, the train state, one jitted `train_step`, and
checkpoint save/restore; `train_and_evaluate(config, workdir, data_iter)` runs them.

Data: any iterator of batch dicts {'noisy', 'clean', 'aug_labels'} (see
`edm_flax.input_pipeline`); the target is y = 2·clean − 1 and the condition y_c = 2·noisy − 1.
If the iterator has `get_state()`/`set_state()`, its position is checkpointed with the model so a
killed run resumes on the same batches.

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
  2022; NVlabs/edm@62072d2, `training/training_loop.py`. SPEC.md §7.5.
"""
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from edm_flax import input_pipeline
from edm_flax import loss as loss_lib
from edm_flax import precond

# ---------------------------------------------------------------------------------------------
# Model, schedules and optimiser.
# ---------------------------------------------------------------------------------------------


def create_model(config: ml_collections.ConfigDict) -> precond.EDMPrecond:
  """EDMPrecond(SongUNet) from `config.network` and `config.precond`."""
  return precond.make_model(config)


def learning_rate(step, batch_size: int, lr: float = 1e-3, rampup_img: float = 10e6):
  """EDM's learning rate lr·min(B·k / rampup_img, 1) at step k = 0, 1, … (so k = 0 gives 0).

  Args:
    step: the step count k (int or array; the optimiser's update count).
    batch_size: images per step B.
    lr: the base learning rate.
    rampup_img: images seen when the linear ramp reaches lr.

  Returns:
    float32 array, the learning rate for step k.
  """
  seen = jnp.asarray(step, jnp.float32) * batch_size
  return lr * jnp.minimum(seen / max(rampup_img, 1e-8), 1.0)


def ema_beta(step, batch_size: int, halflife_img: float = 500_000,
             rampup_ratio: float | None = 0.05):
  """EDM's EMA decay β = 0.5^{B / max(h, 1e-8)} with h = min(halflife_img, rampup_ratio·B·k).

  Applied after update k as ema ← β·ema + (1 − β)·θ, so k = 0 gives ema = θ.

  Args:
    step: the step count k (before the increment).
    batch_size: images per step B.
    halflife_img: EMA half-life in images.
    rampup_ratio: half-life ramp as a fraction of the images seen; None disables the ramp.

  Returns:
    float32 array β.
  """
  halflife = jnp.asarray(halflife_img, jnp.float32)
  if rampup_ratio is not None:
    seen = jnp.asarray(step, jnp.float32) * batch_size
    halflife = jnp.minimum(halflife, rampup_ratio * seen)
  return jnp.power(0.5, batch_size / jnp.maximum(halflife, 1e-8))


class NanToNumState(optax.EmptyState):
  """The (empty) state of `nan_to_num_grads`."""


def nan_to_num_grads(nan: float = 0.0, posinf: float = 1e5,
                     neginf: float | None = None) -> optax.GradientTransformation:
  """Replaces NaN gradients by `nan` and ±inf by ±`posinf` (EDM: nan_to_num(0, ±1e5)).

  `optax.zero_nans` handles NaN only; EDM also clamps infinities before Adam.

  Args:
    nan: value for NaN entries.
    posinf: value for +inf entries.
    neginf: value for −inf entries; None means −posinf.

  Returns:
    A stateless GradientTransformation.
  """
  neginf = -posinf if neginf is None else neginf

  def init_fn(params):
    del params
    return NanToNumState()

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(
        lambda g: jnp.nan_to_num(g, nan=nan, posinf=posinf, neginf=neginf), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """nan_to_num → Adam(b1, b2, eps) with EDM's ramped learning rate, no decay or clipping."""
  tc = config.training
  schedule = functools.partial(learning_rate, batch_size=tc.batch_size, lr=tc.lr,
                               rampup_img=tc.lr_rampup_img)
  return optax.chain(
      nan_to_num_grads(posinf=tc.get('grad_nan_to_num', 1e5)),
      optax.scale_by_adam(b1=tc.adam_b1, b2=tc.adam_b2, eps=tc.adam_eps),
      optax.scale_by_learning_rate(schedule),
  )


# RngBitGenerator keys: much cheaper to compile (and run) than threefry, whose unrolled rounds
# dominate XLA:CPU compile time of init and step. The bits differ between backends, which only
# changes which random numbers a run draws. Override with `training.prng_impl`.
DEFAULT_PRNG_IMPL = 'rbg'


def prng_impl(config: ml_collections.ConfigDict) -> str:
  """The PRNG implementation of a run (`training.prng_impl`, default 'rbg')."""
  return config.training.get('prng_impl', DEFAULT_PRNG_IMPL)


def make_rng(seed: int, config: ml_collections.ConfigDict) -> jax.Array:
  """The run's root key from `seed`, of the run's PRNG implementation."""
  return jax.random.key(seed, impl=prng_impl(config))


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; the whole of it is checkpointed.

  Attributes:
    params: network parameters θ.
    opt_state: optimiser state.
    ema_params: the EMA of θ (used for sampling).
    step: int32 scalar k, updates done so far.
    rng: uint32 key data (of `prng_impl`); step k uses fold_in(rng, k).
  """
  params: Any
  opt_state: Any
  ema_params: Any
  step: jax.Array
  rng: jax.Array


def init_params(model: nn.Module, key: jax.Array, config: ml_collections.ConfigDict):
  """Initial parameters of `model` from a dummy batch of one image."""
  r = config.network.img_resolution
  c_img = config.precond.img_channels
  c_cond = config.network.in_channels - c_img
  x = jnp.zeros((1, r, r, c_img), jnp.float32)
  cond = jnp.zeros((1, r, r, c_cond), jnp.float32) if c_cond else None
  aug = (jnp.zeros((1, config.network.augment_dim), jnp.float32)
         if config.network.augment_dim else None)
  return model.init(key, x, jnp.ones((1,), jnp.float32), cond, aug, train=False)['params']


def create_train_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       config: ml_collections.ConfigDict) -> TrainState:
  """A fresh TrainState (ema = θ at initialisation)."""
  init_key, train_key = jax.random.split(key)
  params = init_params(model, init_key, config)
  # A copy, so params and ema_params never share a buffer (both are donated).
  ema_params = jax.tree.map(jnp.copy, params)
  return TrainState(params=params, opt_state=tx.init(params), ema_params=ema_params,
                    step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(train_key))


# ---------------------------------------------------------------------------------------------
# Update step.
# ---------------------------------------------------------------------------------------------


def preprocess_batch(batch: dict[str, jax.Array],
                     dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(target y, condition y_c, aug labels) in EDM's [−1, 1] scaling from a [0, 1] pair batch."""
  clean = 2.0 * batch['clean'].astype(dtype) - 1.0
  condition = 2.0 * batch['noisy'].astype(dtype) - 1.0
  return clean, condition, batch['aug_labels'].astype(jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One EDM update, then the EMA update. Pure; jit it with `make_train_step`.

  Args:
    state: the current TrainState (step k).
    batch: {'noisy', 'clean' [B,32,32,3] in [0,1], 'aug_labels' [B,9]}.
    model: the EDMPrecond module.
    tx: the optimiser.
    config: the config (reads `training` and `loss`).

  Returns:
    (state at step k + 1, metrics) with metrics loss, grad_norm, param_norm, update_norm, lr
    and ema_beta (float32 scalars).
  """
  tc = config.training
  batch_size = batch['clean'].shape[0]
  # float64 networks (the paper's run) get a float64 target and loss.
  dtype = jnp.float64 if jnp.dtype(config.network.dtype) == jnp.float64 else jnp.float32
  clean, condition, aug = preprocess_batch(batch, dtype)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=prng_impl(config)),
                           state.step)

  def loss_fn(params):
    apply_fn = lambda p, *args, **kw: model.apply({'params': p}, *args, **kw)
    loss, _ = loss_lib.edm_loss(apply_fn, params, key, clean, condition, aug,
                                P_mean=config.loss.P_mean, P_std=config.loss.P_std,
                                sigma_data=config.loss.sigma_data, train=True)
    return loss

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  beta = ema_beta(state.step, batch_size, tc.ema_halflife_img, tc.ema_rampup_ratio)
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - beta)
  metrics = {
      'loss': loss,
      'grad_norm': optax.global_norm(grads),
      'param_norm': optax.global_norm(params),
      'update_norm': optax.global_norm(updates),
      'lr': learning_rate(state.step, batch_size, tc.lr, tc.lr_rampup_img),
      'ema_beta': beta,
  }
  new_state = state.replace(params=params, opt_state=opt_state, ema_params=ema_params,
                            step=state.step + 1)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], key: jax.Array, *, model: nn.Module,
              config: ml_collections.ConfigDict) -> jax.Array:
  """EDM loss of `params` on `batch` with dropout off and a fixed key (a validation loss).

  With the same key, σ and the noise are the same in every call, so values are comparable
  across checkpoints.
  """
  dtype = jnp.float64 if jnp.dtype(config.network.dtype) == jnp.float64 else jnp.float32
  clean, condition, aug = preprocess_batch(batch, dtype)
  apply_fn = lambda p, *args, **kw: model.apply({'params': p}, *args, **kw)
  loss, _ = loss_lib.edm_loss(apply_fn, params, key, clean, condition, aug,
                              P_mean=config.loss.P_mean, P_std=config.loss.P_std,
                              sigma_data=config.loss.sigma_data, train=False)
  return loss


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over all devices, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict,
                    mesh: Mesh) -> Callable[[TrainState, Any], tuple[TrainState, Any]]:
  """`train_step` jitted for data parallelism: batch sharded over 'data', state replicated.

  The state argument is donated; pass the batch through `shard_batch` first.
  """
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P('data'))
  step = functools.partial(train_step, model=model, tx=tx, config=config)
  return jax.jit(step, in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                 donate_argnums=0)


class Trainer(NamedTuple):
  """The jitted pieces of one (config, mesh): model, optimiser, init and step functions."""
  model: nn.Module
  tx: optax.GradientTransformation
  init_fn: Callable[[jax.Array], TrainState]
  step_fn: Callable[[TrainState, Any], tuple[TrainState, Any]]


_TRAINERS: dict[tuple[str, tuple[int, ...]], Trainer] = {}
_LOOP_ONLY_FIELDS = ('seed', 'total_img', 'log_every_steps', 'ckpt_every_steps', 'max_to_keep')


def get_trainer(config: ml_collections.ConfigDict, mesh: Mesh) -> Trainer:
  """Builds (once per config and mesh in a process) the model, optimiser and jitted functions.

  Memoised so that a loop restarted in the same process (tests, notebooks) reuses the compiled
  step instead of compiling it again.
  """
  relevant = json.loads(config.to_json_best_effort())
  relevant = {k: relevant.get(k) for k in ('network', 'precond', 'loss', 'training')}
  for k in _LOOP_ONLY_FIELDS:  # fields that do not change the compiled functions
    relevant['training'].pop(k, None)
  key = (json.dumps(relevant, sort_keys=True), tuple(d.id for d in mesh.devices.flat))
  if key not in _TRAINERS:
    model = create_model(config)
    tx = create_optimizer(config)
    init_fn = jax.jit(functools.partial(create_train_state, model=model, tx=tx, config=config),
                      out_shardings=NamedSharding(mesh, P()))
    _TRAINERS[key] = Trainer(model, tx, init_fn, make_train_step(model, tx, config, mesh))
  return _TRAINERS[key]


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts a host batch onto the mesh, split along the batch axis over 'data'."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k], np.float32))
          for k in input_pipeline.BATCH_KEYS}


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------


def checkpoint_manager(workdir: str, max_to_keep: int = 3,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager under workdir/checkpoints with items 'state', 'data' and 'config'.

  Raises:
    ValueError: read_only and there is no checkpoint directory.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if read_only and not os.path.isdir(directory):
    raise ValueError(f'no checkpoint under {directory}')
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=('state', 'data', 'config'))


def data_state(data_iter: Any) -> dict[str, Any]:
  """JSON-serialisable position of `data_iter` ({'state': None} if it has no get_state)."""
  if not hasattr(data_iter, 'get_state'):
    return {'state': None}
  state = data_iter.get_state()
  if isinstance(state, bytes):  # grain.DataLoader iterators return JSON bytes
    return {'state_bytes': state.decode('utf-8')}
  return {'state': state}


def set_data_state(data_iter: Any, saved: dict[str, Any]) -> None:
  """Inverse of `data_state`; a no-op when nothing was saved."""
  if 'state_bytes' in saved:
    data_iter.set_state(saved['state_bytes'].encode('utf-8'))
  elif saved.get('state') is not None:
    if not hasattr(data_iter, 'set_state'):
      raise ValueError('checkpoint holds a data-iterator state but the iterator has no '
                       'set_state()')
    data_iter.set_state(saved['state'])


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, data_iter: Any,
                    config: ml_collections.ConfigDict) -> None:
  """Saves state, data-iterator position and config at step `state.step` (async)."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state(data_iter)),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))))


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState,
                       data_iter: Any = None, step: int | None = None) -> TrainState:
  """Restores the latest (or given) checkpoint into the structure and shardings of `state`.

  Returns `state` unchanged when there is no checkpoint. Sets `data_iter`'s position too.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return state
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  if data_iter is not None:
    set_data_state(data_iter, restored['data'])
  logging.info('Restored checkpoint at step %d from %s', step, manager.directory)
  return restored['state']


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------


class MetricWriter:
  """Writes scalars to workdir/stats.jsonl (one JSON object per line) and TensorBoard.

  TensorBoard goes through `clu.metric_writers`, else `tensorboardX`, else
  `flax.metrics.tensorboard` (which needs TensorFlow); with none importable only the JSONL is
  written.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._file = open(os.path.join(workdir, 'stats.jsonl'), 'a')
    self._tb = None
    self._tb_kind = None
    if tensorboard and jax.process_index() == 0:
      self._tb, self._tb_kind = _tensorboard_writer(os.path.join(workdir, 'tensorboard'))
      if self._tb is None:
        logging.info('No TensorBoard writer (clu, tensorboardX, tensorflow) importable; '
                     'metrics go to stats.jsonl only.')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self._file.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._file.flush()
    if self._tb_kind == 'clu':
      self._tb.write_scalars(step, scalars)
    elif self._tb is not None:
      for k, v in scalars.items():
        (self._tb.add_scalar if self._tb_kind == 'tbx' else self._tb.scalar)(k, v, step)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def _tensorboard_writer(logdir: str):
  """(writer, kind) from the first importable TensorBoard backend, else (None, None)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.SummaryWriter(logdir), 'clu'
  except ImportError:
    pass
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX.SummaryWriter(logdir), 'tbx'
  except ImportError:
    pass
  try:
    from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
    return tensorboard.SummaryWriter(logdir), 'flax'
  except ImportError:  # flax.metrics.tensorboard imports tensorflow
    return None, None


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


def total_steps(config: ml_collections.ConfigDict) -> int:
  """Steps to reach `training.total_img` images (EDM stops once cur_nimg >= total)."""
  return math.ceil(config.training.total_img / config.training.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data_iter: Iterator[dict[str, Any]], *,
                       num_steps: int | None = None, progress: bool = True) -> TrainState:
  """Trains the restorer, resuming from the latest checkpoint in `workdir`.

  Args:
    config: `edm_flax.configs.default` config.
    workdir: run directory; holds checkpoints/, stats.jsonl and tensorboard/.
    data_iter: iterator of [0,1] pair batches of size `config.training.batch_size`, with
      optional get_state()/set_state().
    num_steps: stop after this many steps in total (including restored ones) instead of
      `total_steps(config)`; used to stop a run early.
    progress: show a tqdm progress bar with img/s.

  Returns:
    The final TrainState (a checkpoint of it is in workdir).
  """
  tc = config.training
  batch_size = tc.batch_size
  if batch_size % jax.device_count():
    raise ValueError(f'training.batch_size {batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  os.makedirs(workdir, exist_ok=True)
  last_step = total_steps(config) if num_steps is None else int(num_steps)

  # Model, optimiser, sharding and the jitted step.
  mesh = make_mesh()
  trainer = get_trainer(config, mesh)
  state = trainer.init_fn(make_rng(tc.seed, config))

  return fit(state, trainer.step_fn, data_iter, config, workdir, mesh, last_step=last_step,
             image_size=config.network.img_resolution, progress=progress)


def fit(state: Any, step_fn: Callable[..., Any], data_iter: Iterator[dict[str, Any]],
        config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, *, last_step: int,
        image_size: int, progress: bool = True) -> Any:
  """The training loop shared by the restorer and BF-DnCNN: resume, step, log, checkpoint.

  Args:
    state: the freshly initialised state (replaced by the latest checkpoint if there is one);
      it must have a `step` field.
    step_fn: jitted `(state, sharded batch) -> (state, metrics)`.
    data_iter: pair batches in [0,1] of `config.training.batch_size`, optionally with
      get_state()/set_state() (checkpointed with the state).
    config: the run's config (`training` holds batch_size, log/ckpt intervals, max_to_keep and
      optionally matmul_precision); saved with every checkpoint.
    workdir: run directory (checkpoints/, stats.jsonl, tensorboard/).
    mesh: the 1-D 'data' mesh the batch is sharded over.
    last_step: stop after this many steps in total.
    image_size: expected image side, for batch validation.
    progress: show a tqdm bar with img/s.

  Returns:
    The final state (a checkpoint of it is in workdir).
  """
  tc = config.training
  batch_size = tc.batch_size
  manager = checkpoint_manager(workdir, tc.max_to_keep)
  state = restore_checkpoint(manager, state, data_iter)
  start_step = int(jax.device_get(state.step))

  writer = MetricWriter(workdir)
  bar = None
  if progress and jax.process_index() == 0:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=last_step, initial=start_step, unit='step', dynamic_ncols=True)
  t_last, step_last = time.perf_counter(), start_step
  try:
    for step in range(start_step, last_step):
      try:
        batch = next(data_iter)
      except StopIteration:
        logging.warning('data iterator exhausted after %d steps; stopping', step)
        if step > start_step and step % tc.ckpt_every_steps:
          save_checkpoint(manager, state, data_iter, config)
        break
      input_pipeline.validate_batch(batch, image_size)
      if len(batch['clean']) != batch_size:
        raise ValueError(f"batch has {len(batch['clean'])} images, expected {batch_size}")
      with jax.default_matmul_precision(tc.get('matmul_precision', None)):
        state, metrics = step_fn(state, shard_batch(batch, mesh))
      done = step + 1
      if done % tc.log_every_steps == 0 or done == last_step:
        scalars = jax.device_get(metrics)  # host sync only at log steps
        now = time.perf_counter()
        scalars['img_per_sec'] = batch_size * (done - step_last) / max(now - t_last, 1e-9)
        scalars['kimg'] = done * batch_size / 1e3
        t_last, step_last = now, done
        writer.write(done, scalars)
        if bar is not None:
          bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['img_per_sec']:.1f}")
      if done % tc.ckpt_every_steps == 0 or done == last_step:
        save_checkpoint(manager, state, data_iter, config)
      if bar is not None:
        bar.update(1)
  finally:  # on a crash too, let pending checkpoints finish so the run can resume from them
    if bar is not None:
      bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return state


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with the latest (or given) checkpoint of a restorer workdir.

  Raises:
    ValueError: when the workdir holds no checkpoint.
  """
  manager = checkpoint_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f'no checkpoint under {os.path.join(workdir, "checkpoints")}')
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  manager.close()
  return ml_collections.ConfigDict(restored['config'])


def load_ema_params(workdir: str, config: ml_collections.ConfigDict, step: int | None = None):
  """EMA parameters of the latest (or given) checkpoint in a restorer workdir.

  Raises:
    ValueError: when the workdir holds no checkpoint.
  """
  manager = checkpoint_manager(workdir, read_only=True)
  if (manager.latest_step() if step is None else step) is None:
    raise ValueError(f'no checkpoint under {os.path.join(workdir, "checkpoints")}')
  model, tx = create_model(config), create_optimizer(config)
  abstract = jax.eval_shape(functools.partial(create_train_state, model=model, tx=tx,
                                              config=config), make_rng(0, config))
  replicated = NamedSharding(make_mesh(), P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract)
  state = restore_checkpoint(manager, abstract, step=step)
  manager.close()
  return state.ema_params
