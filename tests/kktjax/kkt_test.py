"""Tests for kktjax.kkt: objective and gradients vs a float64 NumPy reference, optimiser
semantics vs PyTorch's formulas, batching, divergence, the abort rule and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kktjax import kkt
from kktjax import victim
from kktjax.configs import reconstruct


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# ------------------------------------------------------------------------------------------
# Independent float64 NumPy reference (SPEC §3.1 objective, §3.2 hand-derived gradients).
# ------------------------------------------------------------------------------------------
def _relu(t):
  return np.maximum(t, 0.0)


def reference(x, lam, params, alpha, lambda_min):
  """Returns (L, L_kkt, L_box, L_λ, ∂L/∂x, ∂L/∂λ) with Haim's surrogate semantics.

  Rows are candidates. With b1, z1 = W1x + b1, g_b1 = Σδ1 and G_b = −2(b1 − g_b1) enters
  ∂δ1 = G1x + G_b; everything else is the bias-free formula of SPEC §3.2.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(x, np.float64)
  lam = np.asarray(lam, np.float64)
  w1, w2, w3 = p["W1"], p["W2"], p["W3"][0]
  n = x.shape[0]
  y = np.concatenate([-np.ones(n // 2), np.ones(n // 2)])
  c = lam * y / n
  with np.errstate(over="ignore"):
    s = lambda z: 1.0 / (1.0 + np.exp(-alpha * z))
  ds = lambda z: alpha * s(z) * (1.0 - s(z))
  z1 = x @ w1.T + (p["b1"] if "b1" in p else 0.0)
  h1 = _relu(z1)
  z2 = h1 @ w2.T
  h2 = _relu(z2)
  d2 = c[:, None] * w3[None] * s(z2)
  u = d2 @ w2
  d1 = u * s(z1)
  g = {"W3": (c @ h2)[None], "W2": d2.T @ h1, "W1": d1.T @ x}
  if "b1" in p:
    g["b1"] = d1.sum(0)
  big_g = {k: -2.0 * (p[k] - g[k]) for k in g}
  loss_kkt = sum(np.sum((p[k] - g[k]) ** 2) for k in g)
  loss_box = np.sum(_relu(x - 1) ** 2 + _relu(-1 - x) ** 2)
  loss_lam = 5.0 * np.sum(_relu(lambda_min - lam) ** 2)
  g3 = big_g["W3"][0]
  dd1 = x @ big_g["W1"].T + (big_g["b1"] if "b1" in p else 0.0)
  dd2 = h1 @ big_g["W2"].T + (dd1 * s(z1)) @ w2.T
  dc = h2 @ g3 + np.sum(dd2 * w3[None] * s(z2), axis=1)
  dz2 = dd2 * c[:, None] * w3[None] * ds(z2) + (c[:, None] * g3[None]) * s(z2)
  dh1 = d2 @ big_g["W2"] + dz2 @ w2
  dz1 = dd1 * u * ds(z1) + dh1 * s(z1)
  dx = d1 @ big_g["W1"] + dz1 @ w1 + 2 * _relu(x - 1) - 2 * _relu(-1 - x)
  dlam = dc * y / n - 10.0 * _relu(lambda_min - lam)
  return loss_kkt + loss_box + loss_lam, loss_kkt, loss_box, loss_lam, dx, dlam


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _random_params(key, d, h, bias, w1_std):
  return victim.init_params(key, width=h, input_dim=d, first_layer_bias=bias, w1_std=w1_std,
                            dtype=jnp.float64)


def _problem(d, h, n, bias, w1_std, x_std, seed=0, box=True):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = _random_params(k1, d, h, bias, w1_std)
  if bias:  # A bias of the scale of z1 so its terms matter.
    params["b1"] = params["b1"] * (x_std * np.sqrt(d))
  x = x_std * jax.random.normal(k2, (n, d), jnp.float64)
  if box:  # exercise the box penalty (its gradient then dominates ‖∂L/∂x‖)
    x = x.at[0, :3].set(jnp.array([1.7, -2.2, 1.05]))
  lam = jax.random.uniform(k3, (n,), jnp.float64, -0.2, 1.0)  # some below λ_min
  return params, x, lam


def _jax_loss_grads(params, x, lam, alpha, lambda_min, activation=None):
  n = x.shape[0]
  y = kkt.candidate_labels(n // 2, x.dtype)
  kw = {} if activation is None else {"activation": activation}
  f = lambda x, lam: kkt.kkt_loss(x, lam, params, y, jnp.asarray(alpha, x.dtype),
                                  jnp.asarray(lambda_min, x.dtype), **kw)
  (loss, aux), (gx, glam) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, lam)
  return loss, aux, gx, glam


# ------------------------------------------------------------------------------------------
# Objective and gradients.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_grads_match_reference_tiny(x64, bias):
  params, x, lam = _problem(d=24, h=9, n=6, bias=bias, w1_std=0.5, x_std=0.6)
  loss, aux, gx, glam = _jax_loss_grads(params, x, lam, alpha=3.0, lambda_min=0.3)
  ref = reference(x, lam, params, 3.0, 0.3)
  assert ref[2] > 0 and ref[3] > 0  # both penalties active
  np.testing.assert_allclose([float(loss), float(aux.loss_kkt), float(aux.loss_box),
                              float(aux.loss_lambda)], ref[:4], rtol=1e-13)
  assert _rel(gx, ref[4]) < 1e-12
  assert _rel(glam, ref[5]) < 1e-12


@pytest.mark.parametrize("bias", [False, True])
def test_grads_match_reference_full_net(x64, bias):
  # The paper's 3072-1000-1000-1 net with 20 candidates.
  params, x, lam = _problem(d=3072, h=1000, n=20, bias=bias, w1_std=1e-2, x_std=0.05, seed=1,
                            box=False)
  loss, aux, gx, glam = _jax_loss_grads(params, x, lam, alpha=20.0, lambda_min=0.5)
  ref = reference(x, lam, params, 20.0, 0.5)
  np.testing.assert_allclose(float(loss), ref[0], rtol=1e-13)
  assert _rel(gx, ref[4]) < 1e-10
  assert _rel(glam, ref[5]) < 1e-10


@jax.custom_vjp
def _bad_surrogate(z, alpha):
  return jnp.maximum(z, 0.0)


def _bad_fwd(z, alpha):
  return jnp.maximum(z, 0.0), (z, alpha)  # the pitfall: primal by plain relu


_bad_surrogate.defvjp(_bad_fwd, lambda res, g: (g * jax.nn.sigmoid(res[1] * res[0]),
                                                jnp.zeros_like(res[1])))


def test_plain_relu_primal_gives_wrong_x_gradient(x64):
  # SPEC §3.2 pitfall: the reference test must be able to fail. Only ∂L/∂x is affected.
  params, x, lam = _problem(d=120, h=30, n=20, bias=False, w1_std=1e-2, x_std=0.05, seed=2,
                            box=False)
  ref = reference(x, lam, params, 20.0, 0.5)
  _, _, gx_bad, glam_bad = _jax_loss_grads(params, x, lam, 20.0, 0.5, _bad_surrogate)
  _, _, gx, _ = _jax_loss_grads(params, x, lam, 20.0, 0.5)
  assert _rel(gx, ref[4]) < 1e-12
  assert _rel(gx_bad, ref[4]) > 1e-2
  assert _rel(glam_bad, ref[5]) < 1e-12


def test_candidate_labels():
  np.testing.assert_array_equal(np.asarray(kkt.candidate_labels(3)), [-1, -1, -1, 1, 1, 1])


# ------------------------------------------------------------------------------------------
# Optimisers: PyTorch semantics.
# ------------------------------------------------------------------------------------------
def _tiny_victims(num_victims, width=32, dim=48, dtype=jnp.float32, seed=0, w1_std=1e-2):
  keys = jax.random.split(jax.random.key(seed), num_victims)
  return jax.vmap(lambda k: victim.init_params(k, width=width, input_dim=dim, w1_std=w1_std,
                                               dtype=dtype))(keys)


def _init(recipe, params, hp, m, seed=0):
  v, r = np.shape(hp.alpha)
  dtype = params["W1"].dtype
  keys = jax.random.split(jax.random.key(seed), v * r).reshape(v, r)
  hp = kkt.AttackHParams(*(jnp.asarray(a, dtype) for a in hp))
  return kkt.make_init_fn(recipe, m, params["W1"].shape[-1], jnp.dtype(dtype))(keys, hp)


@pytest.mark.parametrize("recipe", ["generate", "evaluate"])
def test_update_semantics_match_pytorch(x64, recipe):
  m, steps, lr_x, lr_lam = 3, 3, 0.3, 0.05
  params = _tiny_victims(1, width=16, dim=48, dtype=jnp.float64, w1_std=0.3)
  hp = kkt.fixed_hparams(1, 1, alpha=5.0, lambda_min=0.5, sigma=0.5, lr_x=lr_x,
                         lr_lambda=lr_lam)
  state = _init(recipe, params, hp, m)
  x = np.array(state.x[0, 0])
  lam = np.array(state.lam[0, 0])
  p0 = jax.tree.map(lambda a: a[0], params)
  grad = jax.jit(jax.grad(lambda x, lam: kkt.kkt_loss(
      x, lam, p0, kkt.candidate_labels(m, jnp.float64), 5.0, 0.5)[0], argnums=(0, 1)))
  # PyTorch Adadelta (rho=0.9, eps=1e-6) and SGD(momentum=0.9), written out by hand.
  acc = [np.zeros_like(x), np.zeros_like(lam)]
  acc_delta = [np.zeros_like(x), np.zeros_like(lam)]
  buf = [np.zeros_like(x), np.zeros_like(lam)]
  ps, lrs = [x, lam], [lr_x, lr_lam]
  for _ in range(steps):
    gs = [np.asarray(g) for g in grad(*ps)]
    for i in range(2):
      if recipe == "generate":
        acc[i] = 0.9 * acc[i] + 0.1 * gs[i] ** 2
        delta = np.sqrt(acc_delta[i] + 1e-6) / np.sqrt(acc[i] + 1e-6) * gs[i]
        acc_delta[i] = 0.9 * acc_delta[i] + 0.1 * delta ** 2
        ps[i] = ps[i] - lrs[i] * delta
      else:
        buf[i] = 0.9 * buf[i] + gs[i]
        ps[i] = ps[i] - lrs[i] * buf[i]
  if recipe == "generate":  # ... which with lr = 1 is optax.adadelta(1.0, 0.9, 1e-6) on (x, λ).
    lr_one = jax.tree.map(jnp.array, state)  # a copy: the chunk donates its input
    lr_one = lr_one._replace(lr_x=jnp.ones_like(state.lr_x), lr_lambda=jnp.ones_like(state.lr_x))
    opt = optax.adadelta(learning_rate=1.0, rho=0.9, eps=1e-6)
    xl = (jnp.asarray(x), jnp.asarray(lam))
    opt_state = opt.init(xl)
    for _ in range(steps):
      upd, opt_state = opt.update(grad(*xl), opt_state, xl)
      xl = optax.apply_updates(xl, upd)
    out1 = kkt.make_attack_chunk(recipe)(lr_one, params, jnp.asarray(steps, jnp.int32))
    np.testing.assert_allclose(np.asarray(out1.x[0, 0]), np.asarray(xl[0]), rtol=1e-13,
                               atol=1e-16)
    np.testing.assert_allclose(np.asarray(out1.lam[0, 0]), np.asarray(xl[1]), rtol=1e-13)
  out = kkt.make_attack_chunk(recipe)(state, params, jnp.asarray(steps, jnp.int32))
  assert int(out.step[0, 0]) == steps and int(out.status[0, 0]) == kkt.RUNNING
  np.testing.assert_allclose(np.asarray(out.x[0, 0]), ps[0], rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(np.asarray(out.lam[0, 0]), ps[1], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Batching, divergence, abort.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_batch_equals_runs_one_by_one(dtype, rtol):
  with jax.enable_x64(dtype == jnp.float64):
    m, steps = 4, 6
    params = _tiny_victims(2, width=16, dtype=dtype)
    hp = kkt.sample_sweep(jax.random.key(5), num_runs=3, num_victims=2)
    hp = hp._replace(sigma=np.full((2, 3), 0.05))
    state = _init("evaluate", params, hp, m)
    host = jax.device_get(state)
    chunk = kkt.make_attack_chunk("evaluate")
    batched = jax.device_get(chunk(state, params, jnp.asarray(steps, jnp.int32)))
    for v in range(2):
      for r in range(3):
        one = jax.tree.map(lambda a: jnp.asarray(a[v:v + 1, r:r + 1]), host)
        pv = jax.tree.map(lambda a: a[v:v + 1], params)
        out = jax.device_get(chunk(one, pv, jnp.asarray(steps, jnp.int32)))
        np.testing.assert_allclose(out.x[0, 0], batched.x[v, r], rtol=rtol,
                                   atol=rtol * np.abs(batched.x[v, r]).max())
        np.testing.assert_allclose(out.lam[0, 0], batched.lam[v, r], rtol=rtol)
        np.testing.assert_allclose(out.loss_kkt[0, 0], batched.loss_kkt[v, r], rtol=rtol)
    assert not np.array_equal(batched.x[0, 0], batched.x[0, 1])  # runs really differ


def test_divergence_freezes_one_run_and_leaves_others_bit_identical():
  m = 4
  params = _tiny_victims(1, width=24)
  base = kkt.fixed_hparams(1, 3, alpha=20.0, lambda_min=0.5, sigma=0.01, lr_x=0.05,
                           lr_lambda=1e-4)
  bad = base._replace(lr_x=np.array([[0.05, 1e38, 0.05]]))
  kw = dict(m=m, num_iters=12, snapshot_iters=(1, 6, 12), progress=False)
  ok = kkt.run_attack(params, base, "evaluate", jax.random.key(3), **kw)
  nan = kkt.run_attack(params, bad, "evaluate", jax.random.key(3), **kw)
  np.testing.assert_array_equal(ok.status, [[0, 0, 0]])
  np.testing.assert_array_equal(nan.status, [[0, kkt.DIVERGED, 0]])
  assert nan.steps[0, 1] < 6 and not np.isfinite(nan.loss[0, 1])
  for r in (0, 2):
    np.testing.assert_array_equal(nan.snapshots[0, r], ok.snapshots[0, r])
    np.testing.assert_array_equal(nan.x[0, r], ok.x[0, r])
    np.testing.assert_array_equal(nan.loss[0, r], ok.loss[0, r])
  np.testing.assert_array_equal(nan.snapshot_valid[0, 1], [nan.steps[0, 1] >= 1, False, False])
  assert np.all(np.isnan(nan.snapshots[0, 1, 1:]))
  assert np.all(np.isfinite(nan.x[0, 1]))  # frozen at its last finite iterate


def _np_ncc(a, b):
  def std(t):
    t = t.reshape(len(t), 3, -1)
    t = (t - t.mean(-1, keepdims=True)) / t.std(-1, ddof=1, keepdims=True)
    return t.reshape(len(t), -1)
  a, b = std(np.asarray(a, np.float64)), std(np.asarray(b, np.float64))
  return ((a[:, None] - b[None]) ** 2).sum(-1)


def _np_extraction_score(x, train):
  """Haim's viz_nns(max_per_nn=1) then v[:10].mean(), written out in NumPy."""
  d = _np_ncc(x, train)
  nn, v = d.argmin(1), d.min(1)
  kept = {}
  for j, dist in zip(nn, v):
    kept[j] = min(kept.get(j, np.inf), dist)
  return np.mean(sorted(kept.values())[:10])


@pytest.mark.parametrize("num_matched", [3, 16])
def test_extraction_score_matches_haim(num_matched):
  rng = np.random.default_rng(0)
  train = rng.normal(size=(20, 3072))
  # Candidates: noisy copies of `num_matched` training images (several per image) + noise.
  src = rng.integers(0, num_matched, size=30)
  x = train[src] + rng.normal(size=(30, 3072)) * rng.uniform(0.3, 2.0, size=(30, 1))
  got = float(jax.jit(kkt.extraction_score)(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(train, jnp.float32)))
  np.testing.assert_allclose(got, _np_extraction_score(x, train), rtol=1e-4)


def test_abort_rule():
  cfg = reconstruct.get_config("evaluate,tiny")
  m = cfg.m
  params = _tiny_victims(2, width=24)
  hp = kkt.fixed_hparams(2, 1, alpha=20.0, lambda_min=0.5, sigma=0.05, lr_x=0.01,
                         lr_lambda=1e-4)
  # Victim 0's "training set" is its own candidates after one update (they barely move with
  # lr_x = 0.01, so the score stays near 0); victim 1's is unrelated noise. With D = 3×16 the
  # NCC distance lies in [0, 180] and unrelated images score ≈ 90, so the threshold is scaled.
  first = kkt.run_attack(params, hp, "evaluate", jax.random.key(7), m=m, num_iters=1,
                         snapshot_iters=(1,), progress=False)
  rng = np.random.default_rng(1)
  train = np.stack([first.snapshots[0, 0, 0], rng.normal(size=(2 * m, 48))])
  res = kkt.run_attack(params, hp, "evaluate", jax.random.key(7), m=m, num_iters=40,
                       snapshot_iters=(10, 20, 40), train_images=train,
                       abort_check_every=cfg.abort_check_every, abort_start=cfg.abort_start,
                       abort_threshold=45.0, progress=False)
  assert res.score_iters == (10, 20, 30, 40)
  np.testing.assert_array_equal(res.status[:, 0], [kkt.RUNNING, kkt.ABORTED])
  np.testing.assert_array_equal(res.abort_iter[:, 0], [-1, 20])
  np.testing.assert_array_equal(res.steps[:, 0], [40, 20])
  np.testing.assert_array_equal(res.snapshot_valid[:, 0], [[1, 1, 1], [1, 0, 0]])
  assert np.all(res.scores[0, 0] < 5)
  assert np.all(res.scores[1, 0, :2] > 45)  # checked at 10 too; abort from 20
  assert np.all(np.isnan(res.scores[1, 0, 2:]))
  assert res.num_iters == 40
  # The score reported is Haim's score of the state at that iteration.
  np.testing.assert_allclose(res.scores[0, 0, -1], _np_extraction_score(res.x[0, 0], train[0]),
                             rtol=1e-3, atol=1e-2)


def test_all_runs_aborted_stops_early():
  # Same shapes as test_abort_rule (V=2, R=1, m=8), so nothing recompiles.
  params = _tiny_victims(2, width=24)
  hp = kkt.fixed_hparams(2, 1, alpha=20.0, lambda_min=0.5, sigma=0.05, lr_x=0.01,
                         lr_lambda=1e-4)
  train = np.random.default_rng(2).normal(size=(2, 16, 48))
  res = kkt.run_attack(params, hp, "evaluate", jax.random.key(0), m=8, num_iters=100,
                       snapshot_iters=(50, 100), train_images=train, abort_check_every=10,
                       abort_start=10, abort_threshold=45.0, progress=False)
  assert res.num_iters == 10
  np.testing.assert_array_equal(res.abort_iter, [[10], [10]])
  assert not res.snapshot_valid.any() and np.isnan(res.snapshots).all()


# ------------------------------------------------------------------------------------------
# Hyperparameters, configs, validation.
# ------------------------------------------------------------------------------------------
def test_sample_sweep_ranges():
  hp = kkt.sample_sweep(jax.random.key(0), num_runs=4000)
  assert all(np.shape(v) == (1, 4000) for v in hp)
  for v, (lo, hi) in ((hp.alpha, (10, 500)), (hp.lambda_min, (0.01, 0.5)),
                      (hp.sigma, (1e-6, 0.1)), (hp.lr_x, (0.01, 1.0))):
    assert lo <= v.min() and v.max() <= hi
  np.testing.assert_allclose(np.median(np.log10(hp.sigma)), -3.5, atol=0.15)  # log-uniform
  np.testing.assert_allclose(np.median(np.log10(hp.lr_x)), -1.0, atol=0.05)
  np.testing.assert_allclose(np.median(hp.alpha), 255, atol=15)   # uniform
  assert np.all(hp.lr_lambda == 1e-4)


def test_configs():
  gen = reconstruct.get_config("generate")
  assert (gen.recipe, gen.m, gen.num_iters, gen.alpha, gen.lambda_min, gen.sigma) == (
      "generate", 200, 11_900, 20.0, 0.5, 1e-3)
  assert tuple(gen.snapshot_iters) == kkt.DEFAULT_SNAPSHOT_ITERS["generate"] and not gen.abort
  ev = reconstruct.get_config("evaluate")
  assert (ev.recipe, ev.m, ev.num_iters, ev.lr_lambda, ev.abort, ev.sweep) == (
      "evaluate", 500, 49_000, 1e-4, True, True)
  assert (ev.abort_check_every, ev.abort_start, ev.abort_threshold) == (1000, 5000, 3300.0)
  tiny = reconstruct.get_config("tiny")
  assert tiny.recipe == "generate" and tiny.width <= 100 and tiny.num_iters <= 100
  with pytest.raises(ValueError, match="variant"):
    reconstruct.get_config("generate,evaluate")


def test_tiny_config_smoke():
  cfg = reconstruct.get_config("tiny")
  params = _tiny_victims(2, width=cfg.width)
  res = kkt.run_from_config(params, cfg, jax.random.key(0), progress=False)
  n = 2 * cfg.m
  assert res.snapshots.shape == (2, 1, len(cfg.snapshot_iters), n, 48)
  assert res.snapshot_valid.all() and np.isfinite(res.snapshots).all()
  assert (res.status == kkt.RUNNING).all() and (res.steps == cfg.num_iters).all()
  assert res.lam.shape == (2, 1, n) and np.isfinite(res.loss_kkt).all()


def _bad_call(**overrides):
  params = _tiny_victims(1, width=8)
  kw = dict(params=params, hparams=kkt.fixed_hparams(1, 2, alpha=20.0, lambda_min=0.5,
                                                     sigma=1e-3, lr_x=1.0, lr_lambda=1.0),
            recipe="generate", key=jax.random.key(0), m=2, num_iters=5, snapshot_iters=(5,),
            progress=False)
  kw.update(overrides)
  return kkt.run_attack(**kw)


@pytest.mark.parametrize("overrides,match", [
    (dict(recipe="adam"), "recipe"),
    (dict(m=0), "m "),
    (dict(num_iters=0), "num_iters"),
    (dict(snapshot_iters=(3, 9)), "snapshot_iters"),
    (dict(snapshot_iters=(3, 2)), "snapshot_iters"),
    (dict(train_images=np.zeros((1, 4, 47))), "train_images"),
    (dict(train_images=np.zeros((2, 4, 48))), "train_images"),
    (dict(train_images=np.zeros((1, 4, 48)), abort_check_every=0), "abort_check_every"),
])
def test_bad_input_raises(overrides, match):
  with pytest.raises(ValueError, match=match):
    _bad_call(**overrides)


def test_bad_hparams_and_params_raise():
  hp = kkt.fixed_hparams(1, 2, alpha=20.0, lambda_min=0.5, sigma=1e-3, lr_x=1.0, lr_lambda=1.0)
  with pytest.raises(ValueError, match="lambda_min"):
    _bad_call(hparams=hp._replace(lambda_min=np.full((1, 3), 0.5)))
  with pytest.raises(ValueError, match="lambda_min"):
    _bad_call(hparams=hp._replace(lambda_min=np.full((2,), 0.5)))
  with pytest.raises(ValueError, match="AttackHParams"):
    _bad_call(hparams=dict(hp._asdict()))
  params = _tiny_victims(1, width=8)
  with pytest.raises(ValueError, match="keys"):
    _bad_call(params={"W1": params["W1"], "W2": params["W2"]})
  with pytest.raises(ValueError, match="leading victim axis"):
    _bad_call(params=jax.tree.map(lambda a: a[0], params))
  with pytest.raises(ValueError, match="W2"):
    _bad_call(params={**params, "W2": params["W2"][:, :4]})
  with pytest.raises(ValueError, match="abort"):
    kkt.run_from_config(params, reconstruct.get_config("evaluate,tiny"), jax.random.key(0))



def test_default_snapshot_schedule_is_cut_at_num_iters():
  assert kkt.default_snapshot_iters("generate", 250) == (100, 200, 250)
  assert kkt.default_snapshot_iters("generate") == kkt.DEFAULT_SNAPSHOT_ITERS["generate"]
  assert kkt.default_snapshot_iters("evaluate", 20_000) == (10_000, 15_000, 20_000)
  assert kkt.default_snapshot_iters("evaluate") == (10_000, 15_000, 25_000, 49_000)


@pytest.mark.parametrize("d,h,n,bias", [(48, 20, 10, False), (48, 20, 30, True),
                                        (3072, 100, 20, True), (3072, 100, 100, False)])
def test_fast_kkt_loss_equals_direct_form(x64, d, h, n, bias):
  """The Gram-form objective used by the attack step equals `kkt_loss` (value and gradients),
  on every path: both layers in Gram form, both direct, and mixed."""
  p = victim.init_params(jax.random.PRNGKey(0), h, input_dim=d, first_layer_bias=bias,
                         w1_std=0.05, dtype=jnp.float64)
  rng = np.random.default_rng(0)
  x = rng.normal(0, 0.05, (n, d))
  x[0, :2] = (1.4, -1.6)   # box penalty active
  lam = rng.uniform(0, 1, n)   # some below λ_min: λ penalty active
  y = kkt.candidate_labels(n // 2, jnp.float64)
  args = (jnp.asarray(x), jnp.asarray(lam), p, y, jnp.float64(37.0), jnp.float64(0.4))
  grad = lambda fn: jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(*args)
  (l_ref, aux_ref), (gx_ref, gl_ref) = grad(kkt.kkt_loss)
  (l_fast, aux_fast), (gx_fast, gl_fast) = grad(kkt.kkt_loss_fast)
  np.testing.assert_allclose(l_fast, l_ref, rtol=1e-12)
  np.testing.assert_allclose(aux_fast.loss_kkt, aux_ref.loss_kkt, rtol=1e-12)
  np.testing.assert_allclose(gx_fast, gx_ref, rtol=1e-9, atol=1e-12 * np.abs(gx_ref).max())
  np.testing.assert_allclose(gl_fast, gl_ref, rtol=1e-9, atol=1e-12 * np.abs(gl_ref).max())
