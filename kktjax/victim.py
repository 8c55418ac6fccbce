"""Victims: bias-free 3072-1000-1000-1 ReLU MLPs, trained many at once with `jax.vmap`.

Parameters are a plain dict in PyTorch's [out, in] layout ({"W1", "W2", "W3"} and optionally
"b1"), so weights swap one-to-one with Haim et al.'s code. A *batch* of victims is the same
pytree with a leading victim axis on every leaf.

References:
  Haim et al., "Reconstructing Training Data from Trained Neural Networks", NeurIPS 2022.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]

INIT_SCHEMES = ("torch", "he_normal")
RECIPES = ("adadelta", "gd")


# ------------------------------------------------------------------------------------------
# Model.
# ------------------------------------------------------------------------------------------
def init_params(key: jax.Array, width: int = 1000, input_dim: int = 3072,
                first_layer_bias: bool = False, init: str = "torch", w1_std: float = 1e-4,
                dtype: Any = jnp.float32) -> Params:
  """Initialises one victim as in SPEC §2.

  Args:
    key: PRNG key.
    width: hidden width (1000 in the paper).
    input_dim: flattened input size (3072 for CIFAR-10).
    first_layer_bias: Haim's variant with a bias b1 ~ N(0, w1_std²) on layer 1.
    init: "torch" (PyTorch nn.Linear default, U(±1/sqrt(fan_in)), what Haim and the paper
      call Kaiming init) or "he_normal" (N(0, 2/fan_in)) for W2 and W3.
    w1_std: std of W1 (1e-4 in Haim's published commands).
    dtype: parameter dtype.

  Returns:
    A dict of arrays in [out, in] layout.
  """
  if init not in INIT_SCHEMES:
    raise ValueError(f"unknown victim init {init!r}; expected one of {INIT_SCHEMES}")
  k1, k2, k3, kb = jax.random.split(key, 4)
  params = {"W1": w1_std * jax.random.normal(k1, (width, input_dim), dtype)}
  for name, k, shape in (("W2", k2, (width, width)), ("W3", k3, (1, width))):
    fan_in = shape[1]
    if init == "torch":
      bound = 1.0 / np.sqrt(fan_in)
      params[name] = jax.random.uniform(k, shape, dtype, -bound, bound)
    else:
      params[name] = np.sqrt(2.0 / fan_in) * jax.random.normal(k, shape, dtype)
  if first_layer_bias:
    params["b1"] = w1_std * jax.random.normal(kb, (width,), dtype)
  return params


def apply(params: Params, x: jax.Array,
          activation: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """Φ(θ; x) = W3·act(W2·act(W1·x [+ b1])) for a batch x [n, d]; returns [n]."""
  z1 = x @ params["W1"].T
  if "b1" in params:
    z1 = z1 + params["b1"]
  h1 = activation(z1)
  h2 = activation(h1 @ params["W2"].T)
  return (h2 @ params["W3"].T)[..., 0]


def logistic_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean logistic loss (1/n)·Σ softplus(−y·Φ(x)), y ∈ {−1, +1} (= BCEWithLogits, mean)."""
  return jnp.mean(jax.nn.softplus(-y * apply(params, x)))


def num_params(params: Params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


class VictimMetrics(NamedTuple):
  loss: jax.Array
  train_error: jax.Array   # fraction of misclassified training points
  min_margin: jax.Array    # min_i y_i Φ(x_i); > 0 iff the training set is separated


def evaluate(params: Params, x: jax.Array, y: jax.Array) -> VictimMetrics:
  out = apply(params, x)
  margins = y * out
  return VictimMetrics(loss=jnp.mean(jax.nn.softplus(-margins)),
                       train_error=jnp.mean((margins <= 0).astype(out.dtype)),
                       min_margin=jnp.min(margins))


# ------------------------------------------------------------------------------------------
# Training recipes.
# ------------------------------------------------------------------------------------------
def make_optimizer(recipe: str) -> optax.GradientTransformation:
  """The two recipes of SPEC §2, with the learning rate as an injected (traced) hyperparameter.

  "adadelta": data generation, optax.adadelta(lr, rho=0.9, eps=1e-6) = PyTorch's defaults.
  "gd": evaluation, plain full-batch gradient descent.
  The learning rate lives in the optimiser state, so each victim of a vmapped batch can
  have its own without recompiling.
  """
  if recipe == "adadelta":
    # Only the learning rate is injected: traced rho/eps/weight_decay would add a g + 0·θ pass
    # and split the update into more memory passes over the 4M parameters.
    return optax.inject_hyperparams(optax.adadelta, static_args=("rho", "eps", "weight_decay"))(
        learning_rate=1.0, rho=0.9, eps=1e-6)
  if recipe == "gd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
  raise ValueError(f"unknown victim recipe {recipe!r}; expected one of {RECIPES}")


def default_learning_rate(recipe: str) -> float:
  return {"adadelta": 1.0, "gd": 0.01}[recipe]


class TrainState(NamedTuple):
  """State of one victim (or, with a leading axis, of a batch of victims)."""
  params: Params
  opt_state: Any
  epoch: jax.Array    # int32, number of epochs run (a failed victim's params stop changing)
  failed: jax.Array   # bool, a non-finite loss was seen; the victim is frozen from then on


def init_state(params: Params, optimizer: optax.GradientTransformation,
               learning_rate: jax.Array) -> TrainState:
  opt_state = optimizer.init(params)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(
      learning_rate, opt_state.hyperparams["learning_rate"].dtype)
  return TrainState(params, opt_state, jnp.zeros((), jnp.int32), jnp.zeros((), bool))


def train_step(optimizer: optax.GradientTransformation, state: TrainState, x: jax.Array,
               y: jax.Array) -> tuple[TrainState, jax.Array]:
  """One full-batch update; a victim whose loss turns non-finite is frozen and marked failed."""
  loss, grads = jax.value_and_grad(logistic_loss)(state.params, x, y)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  failed = state.failed | ~jnp.isfinite(loss)
  keep = lambda new, old: jnp.where(failed, old, new)
  new = TrainState(jax.tree.map(keep, params, state.params),
                   jax.tree.map(keep, opt_state, state.opt_state),
                   state.epoch + 1, failed)
  return new, loss


def train_epochs(optimizer: optax.GradientTransformation, state: TrainState, x: jax.Array,
                 y: jax.Array, num_epochs: int) -> tuple[TrainState, jax.Array]:
  """`num_epochs` full-batch updates in one `lax.scan`; returns the state and the last loss."""
  def body(s, _):
    s, loss = train_step(optimizer, s, x, y)
    return s, loss
  state, losses = jax.lax.scan(body, state, None, length=num_epochs)
  return state, losses[-1]


def make_batched_trainer(recipe: str, num_epochs: int):
  """Returns jit(vmap(train `num_epochs` epochs)) over a leading victim axis.

  One compilation serves any batch of K victims with the same shapes: data, parameters,
  learning rates and failure flags are all batched arrays. The state is donated.
  """
  optimizer = make_optimizer(recipe)
  fn = jax.vmap(lambda s, x, y: train_epochs(optimizer, s, x, y, num_epochs))
  return jax.jit(fn, donate_argnums=0)


def make_batched_init(recipe: str):
  optimizer = make_optimizer(recipe)
  return jax.jit(jax.vmap(lambda p, lr: init_state(p, optimizer, lr)))


batched_evaluate = jax.jit(jax.vmap(evaluate))


# ------------------------------------------------------------------------------------------
# A batch of victims as a resumable job.
# ------------------------------------------------------------------------------------------
class VictimBatch(NamedTuple):
  """K victims and their data, with a leading victim axis on every array."""
  state: TrainState
  x: np.ndarray        # [K, n, 3072] mean-subtracted, C,H,W flattened
  y: np.ndarray        # [K, n] ±1
  mu: np.ndarray       # [K, 32, 32, 3]
  indices: np.ndarray  # [K, n] indices into the CIFAR-10 split
  run_ids: np.ndarray  # [K]


def _dtype(name: str):
  if name not in ("float32", "float64"):
    raise ValueError(f"victim dtype must be 'float32' or 'float64', got {name!r}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1 or "
                     "jax.config.update('jax_enable_x64', True) before any computation)")
  return jnp.dtype(name)


def _pool_and_labels(config) -> tuple[np.ndarray, Any, np.ndarray | None]:
  from kktjax import data as data_lib
  split = "test" if config.split == "heldout" else config.split
  cifar = data_lib.load_cifar10(split, config.data_dir or None)
  pool = None
  if config.split == "heldout":
    lists = list(config.duplicate_lists) or [
        p for p in os.environ.get("KKTJAX_CIFAR_DUPLICATES", "").split(os.pathsep) if p]
    if not lists:
      raise ValueError("split 'heldout' needs ciFAIR duplicate lists: set "
                       "config.duplicate_lists or $KKTJAX_CIFAR_DUPLICATES")
    pool = data_lib.heldout_pool(lists)
  return cifar.images, cifar.labels, pool


def build_victim_batch(config) -> VictimBatch:
  """Samples each victim's balanced training set and initialises it (all from (seed, run id))."""
  from kktjax import data as data_lib
  from kktjax import seeding
  dtype = _dtype(config.dtype)
  images, labels, pool = _pool_and_labels(config)
  run_ids = config.first_run_id + np.arange(config.num_victims)
  xs, ys, mus, idxs, params = [], [], [], [], []
  for r in run_ids:
    rng = data_lib.numpy_rng(seeding.stream_key(config.seed, int(r), "data"))
    idx = data_lib.balanced_sample(rng, labels, config.n_per_class, pool)
    vd = data_lib.victim_inputs(data_lib.to_unit(images[idx]), data_lib.binary_labels(labels[idx]),
                                dtype)
    xs.append(vd.x), ys.append(vd.y), mus.append(vd.mu), idxs.append(idx)
    params.append(init_params(seeding.stream_key(config.seed, int(r), "victim"), config.width,
                              first_layer_bias=config.first_layer_bias, init=config.init,
                              w1_std=config.w1_std, dtype=dtype))
  params = jax.tree.map(lambda *p: jnp.stack(p), *params)
  lr = jnp.full((config.num_victims,), config.learning_rate, dtype)
  state = make_batched_init(config.recipe)(params, lr)
  return VictimBatch(state, np.stack(xs), np.stack(ys), np.stack(mus), np.stack(idxs), run_ids)


def _checkpoint_manager(workdir: str, max_to_keep: int = 2):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save_victims(mngr, batch: VictimBatch, config, wait: bool = True) -> None:
  import orbax.checkpoint as ocp
  epoch = int(np.max(jax.device_get(batch.state.epoch)))
  arrays = {"state": batch.state, "indices": batch.indices, "mu": batch.mu,
            "run_ids": batch.run_ids}
  meta = {"config": json.loads(config.to_json()), "epoch": epoch}
  mngr.save(epoch, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                           meta=ocp.args.JsonSave(meta)), force=True)
  if wait:
    mngr.wait_until_finished()


def restore_victims(workdir: str, config=None, step: int | None = None) -> VictimBatch:
  """Restores a saved batch of victims; rebuilds x, y from the stored indices.

  Args:
    workdir: the directory `train_victims` wrote.
    config: the training config; by default the one stored with the checkpoint.
    step: epoch of the checkpoint to load; default the latest.
  """
  import ml_collections
  import orbax.checkpoint as ocp
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no victim checkpoint in {workdir!r} (missing {ckpt_dir})")
  mngr = _checkpoint_manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"victim checkpoint directory {ckpt_dir!r} holds no checkpoint")
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if config is None:
    config = ml_collections.ConfigDict(meta["config"])
  template = build_victim_batch(config)
  target = {"state": template.state, "indices": template.indices, "mu": template.mu,
            "run_ids": template.run_ids}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  arrays = mngr.restore(step, args=ocp.args.Composite(
      arrays=ocp.args.StandardRestore(abstract)))["arrays"]
  if not np.array_equal(np.asarray(arrays["indices"]), template.indices):
    raise ValueError(f"checkpoint in {workdir!r} was made from other data than this config "
                     "draws (seed, run ids or split differ)")
  return template._replace(state=arrays["state"])


def victim_report(batch: VictimBatch) -> dict[str, list]:
  m = jax.device_get(batched_evaluate(batch.state.params, jnp.asarray(batch.x),
                                      jnp.asarray(batch.y)))
  return {"run_id": batch.run_ids.tolist(), "epoch": np.asarray(batch.state.epoch).tolist(),
          "failed": np.asarray(batch.state.failed).tolist(),
          "loss": np.asarray(m.loss).tolist(),
          "train_accuracy": (1.0 - np.asarray(m.train_error)).tolist(),
          "min_margin": np.asarray(m.min_margin).tolist()}


def train_victims(config, workdir: str, progress: bool = True) -> VictimBatch:
  """Trains (or resumes) a batch of victims to `config.epochs`, checkpointing with orbax.

  Epochs run in jitted `lax.scan` chunks of `config.chunk_epochs`; between chunks the host
  reports progress and saves a checkpoint every `config.checkpoint_every` chunks, so a killed
  job loses at most that much work. Writes `victims.json` (per-victim loss, train accuracy,
  min margin) into `workdir`.
  """
  from tqdm import tqdm
  if config.recipe not in RECIPES:
    raise ValueError(f"unknown victim recipe {config.recipe!r}; expected one of {RECIPES}")
  if config.epochs < 0 or config.chunk_epochs <= 0:
    raise ValueError("config.epochs must be >= 0 and config.chunk_epochs > 0")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "victims_config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  mngr = _checkpoint_manager(workdir)
  if mngr.latest_step() is not None:
    batch = restore_victims(workdir, config)
  else:
    batch = build_victim_batch(config)
  x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
  trainers = {}
  done = int(np.max(jax.device_get(batch.state.epoch)))
  bar = tqdm(total=config.epochs, initial=min(done, config.epochs), unit="epoch",
             disable=not progress, desc=f"{config.num_victims} victims")
  chunks = 0
  state = batch.state
  while done < config.epochs:
    n = min(config.chunk_epochs, config.epochs - done)
    if n not in trainers:
      trainers[n] = make_batched_trainer(config.recipe, n)
    state, loss = trainers[n](state, x, y)
    done += n
    chunks += 1
    bar.update(n)
    loss = np.asarray(loss)
    bar.set_postfix(loss=f"{np.nanmax(loss):.3g}" if np.isfinite(loss).any() else "nan")
    batch = batch._replace(state=state)
    if chunks % config.checkpoint_every == 0 or done >= config.epochs:
      save_victims(mngr, batch, config)
  bar.close()
  if chunks == 0 and mngr.latest_step() is None:
    save_victims(mngr, batch, config)
  report = victim_report(batch)
  with open(os.path.join(workdir, "victims.json"), "w") as f:
    json.dump(report, f, indent=1)
  return batch
