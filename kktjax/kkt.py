"""The KKT reconstruction attack of Haim et al. (2022), batched over victims and runs.

Candidates x_i (mean-subtracted, C,H,W flattened) and multipliers λ_i are optimised so that the
trained parameters θ satisfy the stationarity condition θ = Σ_i λ_i y_i ∇_θΦ(θ; x_i) / N of the
max-margin problem (SPEC §3.1). The gradient ∇_θ uses the surrogate ReLU (`surrogate_relu`).

Layout of a batched attack: every leaf of `AttackState` has leading axes [V, R] (victims, runs
per victim); victim parameters have a leading [V] axis and are shared by the R runs of their
victim (`in_axes=None`, not replicated). Per-run hyperparameters (α, λ_min, σ, lr_x, lr_λ) are
arrays inside the state, so one compilation per (shape, dtype, recipe) serves a whole sweep.
Data generation uses V victims × R = 1; evaluation uses V = 1 × R runs.

References:
  Haim et al., "Reconstructing Training Data from Trained Neural Networks", NeurIPS 2022
  (nivha/dataset_reconstruction: extraction.py, Main.py).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from kktjax import metrics
from kktjax import victim
from kktjax.surrogate import surrogate_relu

Params = dict[str, jax.Array]

RECIPES = ("generate", "evaluate")
# Run status codes (AttackState.status, AttackResult.status).
RUNNING, ABORTED, DIVERGED = 0, 1, 2

DEFAULT_NUM_ITERS = {"generate": 11_900, "evaluate": 49_000}
DEFAULT_SNAPSHOT_ITERS = {
    "generate": (100, 200, 300, 500, 800, 1400, 2400, 4100, 7000, 10_000, 11_900),
    "evaluate": (10_000, 15_000, 25_000, 49_000),
}
# Haim's abort rule (SPEC §3.4).
ABORT_CHECK_EVERY = 1000
ABORT_START = 5000
ABORT_THRESHOLD = 3300.0
ABORT_NUM_BEST = 10

# SPEC §3.3 evaluation sweep.
SWEEP_ALPHA_RANGE = (10.0, 500.0)
SWEEP_LAMBDA_MIN_RANGE = (0.01, 0.5)
SWEEP_SIGMA_RANGE = (1e-6, 0.1)     # log-uniform
SWEEP_LR_X_RANGE = (0.01, 1.0)      # log-uniform
SWEEP_LR_LAMBDA = 1e-4

_BOX_WEIGHT = 1.0
_LAMBDA_WEIGHT = 5.0
_PARAM_KEYS = ("W1", "W2", "W3")


# ------------------------------------------------------------------------------------------
# Objective.
# ------------------------------------------------------------------------------------------
def candidate_labels(m: int, dtype: Any = jnp.float32) -> jax.Array:
  """Fixed candidate labels: −1 for the first m (vehicles), +1 for the last m (animals)."""
  return jnp.concatenate([-jnp.ones((m,), dtype), jnp.ones((m,), dtype)])


class KKTAux(NamedTuple):
  loss_kkt: jax.Array
  loss_box: jax.Array
  loss_lambda: jax.Array


def kkt_loss(x: jax.Array, lam: jax.Array, params: Params, y: jax.Array, alpha: jax.Array,
             lambda_min: jax.Array,
             activation: Callable[[jax.Array, jax.Array], jax.Array] = surrogate_relu,
             ) -> tuple[jax.Array, KKTAux]:
  """L(x, λ) = L_kkt + L_box + L_λ for one run (SPEC §3.1).

  Args:
    x: [N, D] candidates in mean-subtracted space.
    lam: [N] multipliers λ.
    params: one victim's θ ({"W1", "W2", "W3"} and optional "b1"); held fixed.
    y: [N] fixed labels, `candidate_labels(N // 2)`.
    alpha: surrogate sharpness (scalar array).
    lambda_min: lower bound of the λ penalty (scalar array).
    activation: `(z, alpha) -> act(z)` used inside Φ̃; only tests change it.

  Returns:
    (L, KKTAux(L_kkt, L_box, L_λ)), all scalars.

  References:
    Haim et al. 2022, `extraction.get_kkt_loss` and `get_verify_loss`.
  """
  params = jax.lax.stop_gradient(params)
  n = x.shape[0]
  c = lam * y / n  # The 1/N of Haim's grad_outputs.
  net = lambda p: victim.apply(p, x, activation=lambda z: activation(z, alpha))
  _, vjp = jax.vjp(net, params)
  (g,) = vjp(c)  # g = ∇_θ Σ_i c_i Φ̃(θ; x_i), one reverse pass.
  loss_kkt = sum(jnp.sum(jnp.square(params[k] - g[k])) for k in sorted(params))
  loss_box = _BOX_WEIGHT * jnp.sum(jnp.square(jax.nn.relu(x - 1)) +
                                   jnp.square(jax.nn.relu(-1 - x)))
  loss_lambda = _LAMBDA_WEIGHT * jnp.sum(jnp.square(jax.nn.relu(lambda_min - lam)))
  return loss_kkt + loss_box + loss_lambda, KKTAux(loss_kkt, loss_box, loss_lambda)


@jax.custom_vjp
def _gram_inner(d: jax.Array, a: jax.Array) -> jax.Array:
  """‖dᵀa‖² = Σ (d·dᵀ) ⊙ (a·aᵀ), through the two N×N Gram matrices (never forms dᵀa)."""
  return jnp.sum((d @ d.T) * (a @ a.T))


def _gram_inner_fwd(d, a):
  gram_d, gram_a = d @ d.T, a @ a.T
  return jnp.sum(gram_d * gram_a), (d, a, gram_d, gram_a)


def _gram_inner_bwd(res, g):
  d, a, gram_d, gram_a = res
  # Both Gram matrices are symmetric: each cotangent is one product 2·G·v (plain autodiff of
  # d @ d.T would form G·v + Gᵀ·v, two).
  return (2 * g) * (gram_a @ d), (2 * g) * (gram_d @ a)


_gram_inner.defvjp(_gram_inner_fwd, _gram_inner_bwd)


def gram_is_cheaper(num: int, d_in: int, d_out: int) -> bool:
  """Whether layer (d_in → d_out)'s ‖W − δᵀa‖² costs fewer matmul MACs in Gram form.

  Direct: g = δᵀa and its two reverse-mode products, 3·N·d_in·d_out. Gram: a·aᵀ, δ·δᵀ and one
  reverse product each, 2·N²·(d_in + d_out); the cross term ⟨δ, a·Wᵀ⟩ reuses the forward
  pre-activation. At width 1000: layer 1 for N < 1131, layer 2 for N < 750.
  """
  return 2 * num * (d_in + d_out) < 3 * d_in * d_out


def kkt_loss_fast(x: jax.Array, lam: jax.Array, params: Params, y: jax.Array,
                  alpha: jax.Array, lambda_min: jax.Array) -> tuple[jax.Array, KKTAux]:
  """`kkt_loss` with the surrogate ReLU, the same function computed with fewer matmuls.

  The θ-VJP is written out (SPEC §3.2's reference: δ2 = c·w3⊙σ(αz2), u = δ2·W2,
  δ1 = u⊙σ(αz1), g3 = cᵀh2), with h = surrogate_relu(z), so every derivative of an h is σ(αz)
  and the explicit σ's are differentiated normally (Haim's semantics). For a layer with input
  a [N, d_in], pre-activation z = a·Wᵀ (+ b) and δ [N, d_out], when `gram_is_cheaper`:
      ‖W − δᵀa‖² = ‖W‖² − 2⟨δ, a·Wᵀ⟩ + ⟨δ·δᵀ, a·aᵀ⟩,
  which never forms the [d_out, d_in] gradient g = δᵀa. For N = 400, width 1000 this cuts an
  iteration from 5.5 to 3.7 units of 2·N·P FLOPs (the W1-sized products from 5 to 2).

  Numerics: equal to `kkt_loss` to round-off in float64. In float32 the *value* L_kkt carries
  an absolute error of about ε·‖θ‖² (the direct form: ε·‖θ‖·‖θ − g‖); the gradients' error is
  of the same order as the direct form's, whose θ − g cancels in the same way.

  Args and returns as `kkt_loss` (without `activation`).
  """
  params = jax.lax.stop_gradient(params)
  n = x.shape[0]
  c = lam * y / n  # The 1/N of Haim's grad_outputs.
  w1, w2, w3 = params["W1"], params["W2"], params["W3"][0]
  sigma = lambda z: jax.nn.sigmoid(alpha * z)
  sq = lambda a: jnp.sum(jnp.square(a))
  xw = x @ w1.T
  z1 = xw + params["b1"] if "b1" in params else xw
  h1 = surrogate_relu(z1, alpha)
  z2 = h1 @ w2.T
  h2 = surrogate_relu(z2, alpha)
  d2 = (c[:, None] * w3[None, :]) * sigma(z2)
  d1 = (d2 @ w2) * sigma(z1)
  loss_kkt = sq(w3 - c @ h2)
  if gram_is_cheaper(n, w2.shape[1], w2.shape[0]):
    loss_kkt += sq(w2) - 2 * jnp.sum(d2 * z2) + _gram_inner(d2, h1)
  else:
    loss_kkt += sq(w2 - d2.T @ h1)
  if gram_is_cheaper(n, w1.shape[1], w1.shape[0]):
    loss_kkt += sq(w1) - 2 * jnp.sum(d1 * xw) + _gram_inner(d1, x)
  else:
    loss_kkt += sq(w1 - d1.T @ x)
  if "b1" in params:
    loss_kkt += sq(params["b1"] - jnp.sum(d1, axis=0))
  loss_box = _BOX_WEIGHT * jnp.sum(jnp.square(jax.nn.relu(x - 1)) +
                                   jnp.square(jax.nn.relu(-1 - x)))
  loss_lambda = _LAMBDA_WEIGHT * jnp.sum(jnp.square(jax.nn.relu(lambda_min - lam)))
  return loss_kkt + loss_box + loss_lambda, KKTAux(loss_kkt, loss_box, loss_lambda)


# ------------------------------------------------------------------------------------------
# Optimisers and state.
# ------------------------------------------------------------------------------------------
def make_optimizer(recipe: str) -> optax.GradientTransformation:
  """The unit-learning-rate direction of each recipe, over the pytree (x, λ) (SPEC §3.3).

  The step is then p ← p − lr·u with a per-run traced lr (lr_x for x, lr_λ for λ):
  "generate": u = Adadelta direction (ρ=0.9, ε=1e-6; PyTorch's accumulator semantics). With
    lr_x = lr_λ = 1 this is exactly `optax.adadelta(learning_rate=1.0, rho=0.9, eps=1e-6)`.
  "evaluate": u = momentum trace v ← 0.9·v + g (PyTorch SGD, no dampening, no Nesterov).
  """
  if recipe == "generate":
    return optax.scale_by_adadelta(rho=0.9, eps=1e-6)
  if recipe == "evaluate":
    return optax.trace(decay=0.9, nesterov=False)
  raise ValueError(f"unknown attack recipe {recipe!r}; expected one of {RECIPES}")


class AttackHParams(NamedTuple):
  """Per-run hyperparameters; each field is an array of shape [V, R] (or [] for one run)."""
  alpha: Any
  lambda_min: Any
  sigma: Any        # init scale: x ~ N(0, σ²I)
  lr_x: Any
  lr_lambda: Any


class AttackState(NamedTuple):
  """State of one run; batched states carry leading [V, R] axes on every leaf."""
  x: jax.Array            # [N, D] candidates, mean-subtracted space
  lam: jax.Array          # [N]
  opt_state: Any
  step: jax.Array         # int32, updates applied
  status: jax.Array       # int32: RUNNING, ABORTED or DIVERGED (frozen unless RUNNING)
  loss: jax.Array         # L, L_kkt, L_box, L_λ at the iterate of the last update attempted
  loss_kkt: jax.Array
  loss_box: jax.Array
  loss_lambda: jax.Array
  alpha: jax.Array
  lambda_min: jax.Array
  lr_x: jax.Array
  lr_lambda: jax.Array
  sigma: jax.Array


def init_run_state(key: jax.Array, hp: AttackHParams, m: int, dim: int, dtype: Any,
                   optimizer: optax.GradientTransformation) -> AttackState:
  """One run: x ~ N(0, σ²I) [2m, dim], λ ~ U[0, 1) [2m] (SPEC §3.3)."""
  kx, kl = jax.random.split(key)
  sigma = jnp.asarray(hp.sigma, dtype)
  x = sigma * jax.random.normal(kx, (2 * m, dim), dtype)
  lam = jax.random.uniform(kl, (2 * m,), dtype)
  nan = jnp.full((), jnp.nan, dtype)
  return AttackState(
      x=x, lam=lam, opt_state=optimizer.init((x, lam)), step=jnp.zeros((), jnp.int32),
      status=jnp.full((), RUNNING, jnp.int32), loss=nan, loss_kkt=nan, loss_box=nan,
      loss_lambda=nan, alpha=jnp.asarray(hp.alpha, dtype),
      lambda_min=jnp.asarray(hp.lambda_min, dtype), lr_x=jnp.asarray(hp.lr_x, dtype),
      lr_lambda=jnp.asarray(hp.lr_lambda, dtype), sigma=sigma)


def attack_step(optimizer: optax.GradientTransformation, state: AttackState,
                params: Params) -> AttackState:
  """One full-batch update of one run; a run that is not RUNNING stays bit-identical.

  A non-finite L or L_kkt (or a non-finite updated x or λ) marks the run DIVERGED and keeps
  its previous iterate (SPEC §3.4).
  """
  n = state.x.shape[0]
  y = candidate_labels(n // 2, state.x.dtype)
  (loss, aux), (gx, glam) = jax.value_and_grad(kkt_loss_fast, argnums=(0, 1), has_aux=True)(
      state.x, state.lam, params, y, state.alpha, state.lambda_min)
  (ux, ulam), opt_state = optimizer.update((gx, glam), state.opt_state)
  x = state.x - state.lr_x * ux
  lam = state.lam - state.lr_lambda * ulam
  running = state.status == RUNNING
  finite = (jnp.isfinite(loss) & jnp.isfinite(aux.loss_kkt) & jnp.all(jnp.isfinite(x)) &
            jnp.all(jnp.isfinite(lam)))
  advance = running & finite
  keep = lambda new, old: jnp.where(advance, new, old)
  record = lambda new, old: jnp.where(running, new, old)
  return state._replace(
      x=keep(x, state.x), lam=keep(lam, state.lam),
      opt_state=jax.tree.map(keep, opt_state, state.opt_state),
      step=state.step + advance.astype(jnp.int32),
      status=jnp.where(running & ~finite, DIVERGED, state.status).astype(jnp.int32),
      loss=record(loss, state.loss), loss_kkt=record(aux.loss_kkt, state.loss_kkt),
      loss_box=record(aux.loss_box, state.loss_box),
      loss_lambda=record(aux.loss_lambda, state.loss_lambda))


@functools.lru_cache(maxsize=None)
def make_init_fn(recipe: str, m: int, dim: int, dtype: Any):
  """jit(vmap(vmap(init_run_state))): keys [V, R, 2], hparams [V, R] -> AttackState [V, R]."""
  optimizer = make_optimizer(recipe)
  one = lambda k, hp: init_run_state(k, hp, m, dim, dtype, optimizer)
  return jax.jit(jax.vmap(jax.vmap(one)))


@functools.lru_cache(maxsize=None)
def make_attack_chunk(recipe: str):
  """Returns `attack_chunk(state, params, num_iters) -> state`, jitted, state donated.

  state: AttackState with leading [V, R] axes; params: victims' θ with a leading [V] axis,
  shared by the runs of each victim. num_iters is a traced int32 (a `fori_loop` bound), so
  one compilation per (shapes, dtype, recipe) serves every chunk length.
  """
  optimizer = make_optimizer(recipe)
  per_run = jax.vmap(functools.partial(attack_step, optimizer), in_axes=(0, None))
  per_victim = jax.vmap(per_run, in_axes=(0, 0))

  def attack_chunk(state: AttackState, params: Params, num_iters: jax.Array) -> AttackState:
    return jax.lax.fori_loop(0, num_iters, lambda _, s: per_victim(s, params), state)

  return jax.jit(attack_chunk, donate_argnums=0)


# ------------------------------------------------------------------------------------------
# Abort rule.
# ------------------------------------------------------------------------------------------
def extraction_score(x: jax.Array, train_images: jax.Array,
                     num_best: int = ABORT_NUM_BEST) -> jax.Array:
  """Haim's extraction score of one run (SPEC §3.4); lower is better.

  Each candidate is assigned to its nearest training image by NCC distance; each training image
  keeps the smallest distance among its candidates; the score is the mean of the `num_best`
  smallest kept distances (over fewer if fewer training images were assigned).

  Args:
    x: [N, D] candidates, mean-subtracted, C,H,W flattened.
    train_images: [n, D] the victim's training inputs, in the same mean-subtracted space.
    num_best: how many of the best-matched training images to average.

  Returns:
    A scalar score in [0, 12276] for 3×32×32 images.
  """
  d = metrics.ncc_distance_matrix(x, train_images)  # [N, n]
  n_train = d.shape[1]
  nearest = jnp.argmin(d, axis=1)
  assigned = nearest[:, None] == jnp.arange(n_train)[None, :]
  per_train = jnp.min(jnp.where(assigned, d, jnp.inf), axis=0)  # inf if nothing assigned
  best = jnp.sort(per_train)[:min(num_best, n_train)]
  matched = jnp.isfinite(best)
  return jnp.sum(jnp.where(matched, best, 0)) / jnp.maximum(jnp.sum(matched), 1)


@jax.jit
def batched_extraction_score(x: jax.Array, train_images: jax.Array) -> jax.Array:
  """x [V, R, N, D], train_images [V, n, D] -> scores [V, R]."""
  per_run = jax.vmap(extraction_score, in_axes=(0, None))
  return jax.vmap(per_run)(x, train_images)


# ------------------------------------------------------------------------------------------
# Hyperparameters.
# ------------------------------------------------------------------------------------------
def sample_sweep(key: jax.Array, num_runs: int, num_victims: int = 1, *,
                 alpha_range: Sequence[float] = SWEEP_ALPHA_RANGE,
                 lambda_min_range: Sequence[float] = SWEEP_LAMBDA_MIN_RANGE,
                 sigma_range: Sequence[float] = SWEEP_SIGMA_RANGE,
                 lr_x_range: Sequence[float] = SWEEP_LR_X_RANGE,
                 lr_lambda: float = SWEEP_LR_LAMBDA) -> AttackHParams:
  """Draws the evaluation sweep's hyperparameters (SPEC §3.3), float64 NumPy arrays [V, R].

  α ~ U[10, 500], λ_min ~ U[0.01, 0.5], σ log-uniform [1e-6, 0.1], lr_x log-uniform
  [0.01, 1], lr_λ = 1e-4 fixed.
  """
  if int(num_runs) < 1 or int(num_victims) < 1:
    raise ValueError(f"sample_sweep needs num_runs, num_victims >= 1; got {num_runs}, "
                     f"{num_victims}")
  for name, (lo, hi) in (("alpha_range", alpha_range), ("lambda_min_range", lambda_min_range),
                         ("sigma_range", sigma_range), ("lr_x_range", lr_x_range)):
    if not lo <= hi:
      raise ValueError(f"{name} must be (low, high) with low <= high; got {(lo, hi)}")
  for name, (lo, _) in (("sigma_range", sigma_range), ("lr_x_range", lr_x_range)):
    if lo <= 0:
      raise ValueError(f"{name} is log-uniform and needs a positive low end; got {lo}")
  shape = (int(num_victims), int(num_runs))
  # Uniforms in [0, 1) from JAX, mapped to the ranges in float64 so the ends are respected.
  u = np.asarray(jax.random.uniform(key, (4,) + shape, jnp.float32), np.float64)
  lin = lambda u, lo, hi: lo + (hi - lo) * u
  log = lambda u, lo, hi: np.exp(lin(u, np.log(lo), np.log(hi)))
  return AttackHParams(
      alpha=lin(u[0], *alpha_range), lambda_min=lin(u[1], *lambda_min_range),
      sigma=log(u[2], *sigma_range), lr_x=log(u[3], *lr_x_range),
      lr_lambda=np.full(shape, float(lr_lambda)))


def fixed_hparams(num_victims: int, num_runs: int, *, alpha: float, lambda_min: float,
                  sigma: float, lr_x: float, lr_lambda: float) -> AttackHParams:
  """The same hyperparameters for every run, as float64 NumPy arrays [V, R]."""
  shape = (int(num_victims), int(num_runs))
  return AttackHParams(*(np.full(shape, float(v)) for v in
                         (alpha, lambda_min, sigma, lr_x, lr_lambda)))


def hparams_from_config(config, key: jax.Array, num_victims: int) -> AttackHParams:
  """[V, R] hyperparameters from a `configs/reconstruct.py` config (sweep or fixed values)."""
  if config.sweep:
    return sample_sweep(key, config.num_runs, num_victims, alpha_range=config.alpha_range,
                        lambda_min_range=config.lambda_min_range,
                        sigma_range=config.sigma_range, lr_x_range=config.lr_x_range,
                        lr_lambda=config.lr_lambda)
  return fixed_hparams(num_victims, config.num_runs, alpha=config.alpha,
                       lambda_min=config.lambda_min, sigma=config.sigma, lr_x=config.lr_x,
                       lr_lambda=config.lr_lambda)


# ------------------------------------------------------------------------------------------
# Driver.
# ------------------------------------------------------------------------------------------
class AttackResult(NamedTuple):
  """Host (NumPy) results of `run_attack`. V victims, R runs, S snapshots, N candidates."""
  snapshot_iters: tuple[int, ...]   # S iteration counts (state after k updates)
  snapshots: np.ndarray | None      # [V, R, S, N, D] x; NaN where not valid; None with snapshot_fn
  lam_snapshots: np.ndarray | None  # [V, R, S, N]
  snapshot_valid: np.ndarray        # [V, R, S] bool: run was RUNNING when the snapshot was taken
  x: np.ndarray                     # [V, R, N, D] final (or frozen) iterate
  lam: np.ndarray                   # [V, R, N]
  status: np.ndarray                # [V, R] int: RUNNING (finished), ABORTED, DIVERGED
  steps: np.ndarray                 # [V, R] updates applied
  abort_iter: np.ndarray            # [V, R] iteration of the abort, -1 if none
  score_iters: tuple[int, ...]      # iterations where the extraction score was computed
  scores: np.ndarray                # [V, R, len(score_iters)]; NaN for runs not RUNNING
  loss: np.ndarray                  # [V, R] L at the last update attempted (non-finite if diverged)
  loss_kkt: np.ndarray
  loss_box: np.ndarray
  loss_lambda: np.ndarray
  num_iters: int                    # iterations the driver ran (< requested if all stopped)
  hparams: AttackHParams            # the per-run hyperparameters used, NumPy [V, R]


def default_snapshot_iters(recipe: str, num_iters: int | None = None) -> tuple[int, ...]:
  """The recipe's snapshot schedule cut at num_iters, always ending with num_iters."""
  if recipe not in RECIPES:
    raise ValueError(f"unknown attack recipe {recipe!r}; expected one of {RECIPES}")
  num_iters = DEFAULT_NUM_ITERS[recipe] if num_iters is None else int(num_iters)
  return tuple(sorted({t for t in DEFAULT_SNAPSHOT_ITERS[recipe] if t <= num_iters} |
                      {num_iters}))


def _check_params(params: Params) -> tuple[int, int, int]:
  if not isinstance(params, dict) or not set(_PARAM_KEYS) <= set(params) or (
      set(params) - set(_PARAM_KEYS) - {"b1"}):
    raise ValueError(f"params must be a dict with keys W1, W2, W3 (and optional b1); got "
                     f"{sorted(params) if isinstance(params, dict) else type(params)}")
  shapes = {k: np.shape(v) for k, v in params.items()}
  if len(shapes["W1"]) != 3:
    raise ValueError(f"params need a leading victim axis: W1 [V, h, D]; got {shapes['W1']}")
  v, h, d = shapes["W1"]
  want = {"W1": (v, h, d), "W2": (v, h, h), "W3": (v, 1, h), "b1": (v, h)}
  for k, s in shapes.items():
    if s != want[k]:
      raise ValueError(f"params[{k!r}] has shape {s}; expected {want[k]} for W1 {shapes['W1']}")
  dtypes = {jnp.dtype(p.dtype) for p in params.values()}
  if len(dtypes) != 1 or not jnp.issubdtype(dtypes.pop(), jnp.floating):
    raise ValueError(f"params must share one float dtype; got "
                     f"{ {k: str(p.dtype) for k, p in params.items()} }")
  return v, h, d


def _check_hparams(hparams: AttackHParams, num_victims: int) -> int:
  if not isinstance(hparams, AttackHParams):
    raise ValueError(f"hparams must be an AttackHParams; got {type(hparams).__name__}")
  shapes = {k: np.shape(v) for k, v in hparams._asdict().items()}
  for k, s in shapes.items():
    if len(s) != 2 or s[0] != num_victims or s[1] < 1 or s != shapes["alpha"]:
      raise ValueError(f"hparams.{k} must have shape [V={num_victims}, R] like hparams.alpha "
                       f"{shapes['alpha']}; got {s}")
  for k, val in hparams._asdict().items():
    if not np.all(np.isfinite(np.asarray(val, np.float64))):
      raise ValueError(f"hparams.{k} must be finite")
  if np.any(np.asarray(hparams.sigma) < 0):
    raise ValueError("hparams.sigma must be >= 0")
  return shapes["alpha"][1]


def _check_schedule(num_iters, snapshot_iters) -> tuple[int, tuple[int, ...]]:
  if int(num_iters) != num_iters or num_iters < 1:
    raise ValueError(f"num_iters must be a positive integer; got {num_iters!r}")
  snaps = tuple(int(s) for s in snapshot_iters)
  if any(s != t for s, t in zip(snaps, snapshot_iters)) or list(snaps) != sorted(set(snaps)):
    raise ValueError(f"snapshot_iters must be strictly increasing integers; got {snapshot_iters}")
  if snaps and (snaps[0] < 1 or snaps[-1] > num_iters):
    raise ValueError(f"snapshot_iters must lie in [1, num_iters={num_iters}]; got {snaps}")
  return int(num_iters), snaps


def run_attack(params: Params, hparams: AttackHParams, recipe: str, key: jax.Array, *, m: int,
               num_iters: int | None = None, snapshot_iters: Sequence[int] | None = None,
               train_images: Any = None, abort_check_every: int = ABORT_CHECK_EVERY,
               abort_start: int = ABORT_START, abort_threshold: float = ABORT_THRESHOLD,
               shared_init_seed: bool = False, matmul_precision: str | None = "highest",
               snapshot_fn: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None
               = None, progress: bool = True) -> AttackResult:
  """Runs the KKT attack on V victims × R runs and collects snapshots on the host.

  The iterations run in jitted chunks between snapshot and abort-check points; after each
  chunk the needed values are pulled to the host, so only the current state lives on device.

  Args:
    params: victims' θ with a leading [V] axis ({"W1", "W2", "W3"}, optional "b1"); their
      dtype is the attack's dtype.
    hparams: AttackHParams of arrays [V, R] (`sample_sweep`, `fixed_hparams`,
      `hparams_from_config`).
    recipe: "generate" (Adadelta) or "evaluate" (SGD momentum 0.9).
    key: PRNG key for the candidate init; run (v, r) gets its own split of it.
    m: candidates per class (N = 2m).
    num_iters: total updates; default 11,900 ("generate") / 49,000 ("evaluate").
    snapshot_iters: iterations (after that many updates) whose x is kept; default: the
      recipe's schedule cut at num_iters, plus num_iters.
    train_images: [V, n, D] each victim's training inputs in mean-subtracted space (x − μ,
      C,H,W flattened). If given, Haim's abort rule is applied; if None, no abort.
    abort_check_every, abort_start, abort_threshold: the rule: every `abort_check_every`
      updates compute the extraction score; from `abort_start` on, a RUNNING run whose score
      exceeds `abort_threshold` is aborted (frozen; later snapshots invalid).
    shared_init_seed: all runs start from the same random direction (Haim's sweep seeding).
    matmul_precision: `jax.default_matmul_precision` during the attack ("highest" = true fp32
      on GPUs, SPEC §2); None leaves the global setting.
    snapshot_fn: if given, called as snapshot_fn(iteration, x [V, R, N, D], lam [V, R, N],
      valid [V, R]) at each snapshot instead of storing snapshots in the result.
    progress: show a tqdm bar.

  Returns:
    AttackResult (host arrays).
  """
  # Validate everything before touching JAX.
  if recipe not in RECIPES:
    raise ValueError(f"unknown attack recipe {recipe!r}; expected one of {RECIPES}")
  num_victims, _, dim = _check_params(params)
  num_runs = _check_hparams(hparams, num_victims)
  if int(m) != m or m < 1:
    raise ValueError(f"m (candidates per class) must be a positive integer; got {m!r}")
  m = int(m)
  num_iters = DEFAULT_NUM_ITERS[recipe] if num_iters is None else num_iters
  if snapshot_iters is None and int(num_iters) == num_iters:
    snapshot_iters = default_snapshot_iters(recipe, int(num_iters))
  num_iters, snapshot_iters = _check_schedule(num_iters, snapshot_iters)
  abort = train_images is not None
  if abort:
    s = np.shape(train_images)
    if len(s) != 3 or s[0] != num_victims or s[2] != dim or s[1] < 1:
      raise ValueError(f"train_images must have shape [V={num_victims}, n, D={dim}] "
                       f"(mean-subtracted, C,H,W flattened); got {s}")
    if dim % 3 or dim // 3 < 2:
      raise ValueError(f"the abort rule's NCC distance needs D = 3 channels × pixels; got D={dim}")
    if int(abort_check_every) != abort_check_every or abort_check_every < 1:
      raise ValueError(f"abort_check_every must be a positive integer; got {abort_check_every!r}")
  dtype = jnp.dtype(params["W1"].dtype)
  precision = (contextlib.nullcontext() if matmul_precision is None
               else jax.default_matmul_precision(matmul_precision))

  check_iters = (tuple(range(abort_check_every, num_iters + 1, abort_check_every))
                 if abort else ())
  events = sorted(set(snapshot_iters) | set(check_iters) | {num_iters})
  snap_index = {t: i for i, t in enumerate(snapshot_iters)}
  check_index = {t: i for i, t in enumerate(check_iters)}
  n_cand, num_snaps = 2 * m, len(snapshot_iters)
  shape_vr = (num_victims, num_runs)

  store = snapshot_fn is None
  snapshots = np.full(shape_vr + (num_snaps, n_cand, dim), np.nan, dtype) if store else None
  lam_snapshots = np.full(shape_vr + (num_snaps, n_cand), np.nan, dtype) if store else None
  snapshot_valid = np.zeros(shape_vr + (num_snaps,), bool)
  scores = np.full(shape_vr + (len(check_iters),), np.nan, np.float64)
  abort_iter = np.full(shape_vr, -1, np.int64)

  with precision:
    if shared_init_seed:
      keys = jnp.broadcast_to(key, shape_vr + key.shape)
    else:
      keys = jax.random.split(key, num_victims * num_runs).reshape(shape_vr + key.shape[-1:])
    hp = AttackHParams(*(jnp.asarray(np.asarray(v, np.float64), dtype) for v in hparams))
    params = jax.tree.map(jnp.asarray, params)
    state = make_init_fn(recipe, m, dim, dtype)(keys, hp)
    chunk = make_attack_chunk(recipe)
    if abort:
      train_images = jnp.asarray(train_images, dtype)

    bar = tqdm.tqdm(total=num_iters, unit="it", disable=not progress, desc=f"kkt {recipe}")
    done = 0
    status = np.zeros(shape_vr, np.int32)
    for t in events:
      state = chunk(state, params, jnp.asarray(t - done, jnp.int32))
      bar.update(t - done)
      done = t
      status = np.asarray(jax.device_get(state.status))
      if t in check_index:
        sc = np.asarray(jax.device_get(batched_extraction_score(state.x, train_images)),
                        np.float64)
        running = status == RUNNING
        scores[..., check_index[t]] = np.where(running, sc, np.nan)
        if t >= abort_start:
          newly = running & (sc > abort_threshold)
          if newly.any():
            status = np.where(newly, ABORTED, status).astype(np.int32)
            abort_iter[newly] = t
            state = state._replace(status=jnp.asarray(status))
      if t in snap_index:
        s = snap_index[t]
        x_host, lam_host = jax.device_get((state.x, state.lam))
        valid = status == RUNNING
        snapshot_valid[..., s] = valid
        if store:
          snapshots[:, :, s] = np.where(valid[..., None, None], x_host, np.nan)
          lam_snapshots[:, :, s] = np.where(valid[..., None], lam_host, np.nan)
        else:
          snapshot_fn(t, x_host, lam_host, valid)
      if progress:
        kkt_now = np.asarray(jax.device_get(state.loss_kkt))
        live = kkt_now[status == RUNNING]
        bar.set_postfix(running=int((status == RUNNING).sum()),
                        aborted=int((status == ABORTED).sum()),
                        diverged=int((status == DIVERGED).sum()),
                        kkt=f"{np.median(live):.4g}" if live.size else "-")
      if not (status == RUNNING).any():
        break  # Every run stopped; the remaining snapshots stay invalid.
    bar.close()
    final = jax.device_get(state)

  return AttackResult(
      snapshot_iters=snapshot_iters, snapshots=snapshots, lam_snapshots=lam_snapshots,
      snapshot_valid=snapshot_valid, x=np.asarray(final.x), lam=np.asarray(final.lam),
      status=np.asarray(final.status), steps=np.asarray(final.step), abort_iter=abort_iter,
      score_iters=check_iters, scores=scores, loss=np.asarray(final.loss),
      loss_kkt=np.asarray(final.loss_kkt), loss_box=np.asarray(final.loss_box),
      loss_lambda=np.asarray(final.loss_lambda), num_iters=done,
      hparams=AttackHParams(*(np.asarray(v) for v in hparams)))


def run_from_config(params: Params, config, key: jax.Array, *, train_images: Any = None,
                    hparams: AttackHParams | None = None, snapshot_fn=None,
                    progress: bool = True) -> AttackResult:
  """`run_attack` with every setting from a `configs/reconstruct.py` config.

  The key is split into one for the hyperparameter sweep and one for the candidate init.
  `train_images` ([V, n, D], mean-subtracted) is required when `config.abort` is on and
  ignored otherwise. `hparams` ([V, R] arrays) replaces the config's draw, e.g. one batch of a
  larger sweep; the result's `hparams` holds what was used either way.
  """
  num_victims = _check_params(params)[0]
  if config.abort and train_images is None:
    raise ValueError("config.abort is on: pass train_images [V, n, D] (mean-subtracted)")
  k_hp, k_init = jax.random.split(key)
  if hparams is None:
    hparams = hparams_from_config(config, k_hp, num_victims)
  return run_attack(params, hparams, config.recipe, k_init, m=config.m,
                    num_iters=config.num_iters, snapshot_iters=tuple(config.snapshot_iters),
                    train_images=train_images if config.abort else None,
                    abort_check_every=config.abort_check_every, abort_start=config.abort_start,
                    abort_threshold=config.abort_threshold,
                    shared_init_seed=config.shared_init_seed,
                    matmul_precision=config.matmul_precision, snapshot_fn=snapshot_fn,
                    progress=progress)
