"""Training of the BF-DnCNN baseline on (noisy, clean) pairs.

Input: the post-processed reconstruction in [0,1]; target: the clean image in [0,1]. Adam with
default betas, lr 1e-3 halved at 25k, 30k and 35k steps, batch 128, 40k steps, loss
Σ(f(y) − x)²/(2·batch). The data iterator and checkpoint layout are those of `edm_flax.train`.

References:
  Mohan et al., ICLR 2020 (LabForComputationalVision/bias_free_denoising@64930f0); paper §4.
  SPEC.md §8.
"""
import functools
import os
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import optax

from edm_flax import dncnn
from edm_flax import train as train_lib


def create_model(config: ml_collections.ConfigDict) -> dncnn.BFDnCNN:
  """BF-DnCNN from `config.network`."""
  return dncnn.BFDnCNN(**dict(config.network))


def learning_rate_schedule(lr: float = 1e-3,
                           halving_steps=(25_000, 30_000, 35_000)) -> optax.Schedule:
  """lr, halved at each of `halving_steps` (the step count of the update being made)."""
  return optax.piecewise_constant_schedule(lr, {int(s): 0.5 for s in halving_steps})


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (0.9, 0.999, 1e-8) with the halving schedule."""
  tc = config.training
  return optax.adam(learning_rate_schedule(tc.lr, tc.lr_halving_steps))


@flax.struct.dataclass
class DnCNNState:
  """Parameters, BF-BatchNorm running variances, optimiser state and step."""
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array


def create_train_state(key: jax.Array, model: dncnn.BFDnCNN, tx: optax.GradientTransformation,
                       config: ml_collections.ConfigDict) -> DnCNNState:
  """A fresh state (running variances start at 1)."""
  r = config.image_size
  variables = model.init(key, jnp.zeros((1, r, r, model.channels), jnp.float32), train=False)
  params = variables['params']
  return DnCNNState(params=params, batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def train_step(state: DnCNNState, batch: dict[str, jax.Array], *, model: dncnn.BFDnCNN,
               tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[DnCNNState, dict[str, jax.Array]]:
  """One Adam step on Mohan's loss, with train-mode batch statistics.

  Args:
    state: current state.
    batch: {'noisy', 'clean'} [B,H,W,3] in [0,1] (aug_labels are ignored).
    model: the BF-DnCNN.
    tx: the optimiser.
    schedule: its learning-rate schedule (for the metrics).

  Returns:
    (new state, metrics: loss, grad_norm, param_norm, update_norm, lr).
  """
  y = batch['noisy'].astype(jnp.float32)
  x = batch['clean'].astype(jnp.float32)

  def loss_fn(params):
    pred, updated = model.apply({'params': params, 'batch_stats': state.batch_stats}, y,
                                train=True, mutable=['batch_stats'])
    return dncnn.dncnn_loss(pred, x), updated['batch_stats']

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
             'param_norm': optax.global_norm(params), 'update_norm': optax.global_norm(updates),
             'lr': jnp.asarray(schedule(state.step), jnp.float32)}
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                       step=state.step + 1), metrics


def denoise(model: dncnn.BFDnCNN, params: Any, batch_stats: Any, noisy: jax.Array) -> jax.Array:
  """Eval-mode BF-DnCNN output f(y) for noisy images in [0,1] (not clipped)."""
  return model.apply({'params': params, 'batch_stats': batch_stats}, noisy, train=False)


def train(config: ml_collections.ConfigDict, workdir: str,
          data_iter: Iterator[dict[str, Any]], *, num_steps: int | None = None,
          progress: bool = True) -> DnCNNState:
  """Trains BF-DnCNN, resuming from the latest checkpoint in `workdir`.

  Args:
    config: `edm_flax.configs.dncnn` config.
    workdir: run directory (checkpoints/, stats.jsonl).
    data_iter: iterator of [0,1] pair batches of `training.batch_size`, optionally with
      get_state()/set_state().
    num_steps: stop after this many steps in total instead of `training.total_steps`.
    progress: show a tqdm bar.

  Returns:
    The final state.
  """
  tc = config.training
  if tc.batch_size % jax.device_count():
    raise ValueError(f'training.batch_size {tc.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  os.makedirs(workdir, exist_ok=True)
  last_step = tc.total_steps if num_steps is None else int(num_steps)

  mesh = train_lib.make_mesh()
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model, tx = create_model(config), create_optimizer(config)
  schedule = learning_rate_schedule(tc.lr, tc.lr_halving_steps)
  init_fn = jax.jit(functools.partial(create_train_state, model=model, tx=tx, config=config),
                    out_shardings=replicated)
  # Batch statistics are reduced over the global (sharded) batch, as on one device.
  step_fn: Callable[..., Any] = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule),
      in_shardings=(replicated, data), out_shardings=(replicated, replicated),
      donate_argnums=0)
  state = init_fn(train_lib.make_rng(tc.seed, config))

  return train_lib.fit(state, step_fn, data_iter, config, workdir, mesh, last_step=last_step,
                       image_size=config.image_size, progress=progress)


def load_dncnn(workdir: str, config: ml_collections.ConfigDict,
               step: int | None = None) -> tuple[Any, Any]:
  """(params, batch_stats) of the latest (or given) checkpoint in a BF-DnCNN workdir.

  Raises:
    ValueError: when the workdir holds no checkpoint.
  """
  manager = train_lib.checkpoint_manager(workdir, read_only=True)
  if (manager.latest_step() if step is None else step) is None:
    raise ValueError(f'no checkpoint under {os.path.join(workdir, "checkpoints")}')
  model, tx = create_model(config), create_optimizer(config)
  abstract = jax.eval_shape(functools.partial(create_train_state, model=model, tx=tx,
                                              config=config), train_lib.make_rng(0, config))
  replicated = NamedSharding(train_lib.make_mesh(), P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract)
  state = train_lib.restore_checkpoint(manager, abstract, step=step)
  manager.close()
  return state.params, state.batch_stats
