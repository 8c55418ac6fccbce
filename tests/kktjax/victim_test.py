"""Tests of kktjax.victim: inits, loss/gradients vs float64 NumPy, vmap equivalence, recipes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from kktjax import victim
from kktjax.configs import victims as victims_config


def test_init_statistics():
  p = victim.init_params(jax.random.PRNGKey(0), width=1000)
  assert victim.num_params(p) == 4_073_000
  np.testing.assert_allclose(np.std(p["W1"]), 1e-4, rtol=0.01)
  np.testing.assert_allclose(np.mean(p["W1"]), 0, atol=1e-6)
  bound = 1 / np.sqrt(1000)   # U(±1/sqrt(fan_in)) = kaiming_uniform(a=sqrt(5))
  for name in ("W2", "W3"):
    assert np.abs(p[name]).max() <= bound
  np.testing.assert_allclose(np.std(p["W2"]), bound / np.sqrt(3), rtol=0.01)
  assert np.abs(p["W2"]).max() > 0.99 * bound
  pb = victim.init_params(jax.random.PRNGKey(0), width=1000, first_layer_bias=True)
  assert victim.num_params(pb) == 4_074_000
  np.testing.assert_allclose(np.std(pb["b1"]), 1e-4, rtol=0.1)
  he = victim.init_params(jax.random.PRNGKey(0), width=1000, init="he_normal")
  np.testing.assert_allclose(np.std(he["W2"]), np.sqrt(2 / 1000), rtol=0.01)
  with pytest.raises(ValueError, match="unknown victim init"):
    victim.init_params(jax.random.PRNGKey(0), init="lecun")


def _numpy_loss_and_grads(p, x, y):
  """Float64 reference: mean softplus(-yΦ) and its backprop written out by hand."""
  z1 = x @ p["W1"].T + p.get("b1", 0)
  h1 = np.maximum(z1, 0)
  z2 = h1 @ p["W2"].T
  h2 = np.maximum(z2, 0)
  out = h2 @ p["W3"][0]
  n = len(y)
  loss = np.mean(np.logaddexp(0, -y * out))
  dout = -y / (1 + np.exp(y * out)) / n          # d softplus(-y o)/do
  g3 = dout @ h2
  dz2 = np.outer(dout, p["W3"][0]) * (z2 > 0)
  g2 = dz2.T @ h1
  dz1 = (dz2 @ p["W2"]) * (z1 > 0)
  g = {"W1": dz1.T @ x, "W2": g2, "W3": g3[None]}
  if "b1" in p:
    g["b1"] = dz1.sum(0)
  return loss, g


@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradients_match_float64_reference(x64, bias):
  key = jax.random.PRNGKey(1)
  p = victim.init_params(key, width=40, input_dim=30, first_layer_bias=bias, w1_std=0.3,
                         dtype=jnp.float64)
  x = np.random.default_rng(0).normal(size=(12, 30))
  y = np.where(np.arange(12) % 2, 1.0, -1.0)
  loss, grads = jax.value_and_grad(victim.logistic_loss)(p, jnp.asarray(x), jnp.asarray(y))
  ref_loss, ref_grads = _numpy_loss_and_grads({k: np.asarray(v) for k, v in p.items()}, x, y)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
  for k in ref_grads:
    np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-11, atol=1e-15)


def test_adadelta_matches_pytorch_formula():
  # torch.optim.Adadelta(lr=1.0, rho=0.9, eps=1e-6), written out by hand.
  opt = victim.make_optimizer("adadelta")
  p = jnp.array([0.5, -1.0, 2.0])
  state = victim.init_state({"w": p}, opt, 1.0).opt_state
  sq, acc, ref = np.zeros(3), np.zeros(3), np.array(p, np.float64)
  params = {"w": p}
  for g in ([1.0, -2.0, 0.5], [0.3, 0.1, -4.0], [-1.0, 1.0, 1.0]):
    g = np.array(g)
    sq = 0.9 * sq + 0.1 * g * g
    delta = np.sqrt(acc + 1e-6) / np.sqrt(sq + 1e-6) * g
    acc = 0.9 * acc + 0.1 * delta * delta
    ref = ref - 1.0 * delta
    upd, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(params["w"], ref, rtol=1e-6)
  # First step for g = 1 is −sqrt(1e-6)/sqrt(0.1 + 1e-6) (SPEC §2 pitfall: lr must be 1.0).
  s0 = victim.init_state({"w": jnp.zeros(1)}, opt, 1.0).opt_state
  upd, _ = opt.update({"w": jnp.ones(1)}, s0, {"w": jnp.zeros(1)})
  np.testing.assert_allclose(upd["w"], -np.sqrt(1e-6) / np.sqrt(0.1 + 1e-6), rtol=1e-5)


def test_unknown_recipe():
  with pytest.raises(ValueError, match="unknown victim recipe"):
    victim.make_optimizer("adam")


@pytest.mark.parametrize("recipe,lr", [("gd", 0.05), ("adadelta", 1.0)])
def test_vmapped_victims_equal_separate_runs(x64, recipe, lr):
  k, n, d, w, epochs = 3, 10, 24, 32, 7
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.normal(size=(k, n, d)))
  ys = jnp.asarray(np.where(rng.uniform(size=(k, n)) > 0.5, 1.0, -1.0))
  params = [victim.init_params(jax.random.PRNGKey(i), w, d, w1_std=0.1, dtype=jnp.float64)
            for i in range(k)]
  lrs = jnp.asarray([lr, lr / 2, lr * 2])   # per-victim learning rates, one compilation
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
  state = victim.make_batched_init(recipe)(stacked, lrs)
  batched, _ = victim.make_batched_trainer(recipe, epochs)(state, xs, ys)
  opt = victim.make_optimizer(recipe)
  for i in range(k):
    s = victim.init_state(params[i], opt, lrs[i])
    for _ in range(epochs):
      s, _ = victim.train_step(opt, s, xs[i], ys[i])
    for name in s.params:
      np.testing.assert_allclose(batched.params[name][i], s.params[name], rtol=1e-12,
                                 atol=1e-15)
  np.testing.assert_array_equal(batched.epoch, [epochs] * k)


def test_nan_victim_is_frozen_and_others_unaffected():
  k, n, d, w = 2, 6, 8, 16
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(k, n, d)).astype(np.float32)
  ys = np.ones((k, n), np.float32)
  xs[1, 0, 0] = np.nan
  params = [victim.init_params(jax.random.PRNGKey(i), w, d, w1_std=0.1) for i in range(k)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
  state = victim.make_batched_init("gd")(stacked, jnp.full((k,), 0.1))
  out, _ = victim.make_batched_trainer("gd", 3)(state, jnp.asarray(xs), jnp.asarray(ys))
  np.testing.assert_array_equal(out.failed, [False, True])
  np.testing.assert_array_equal(out.params["W2"][1], params[1]["W2"])   # frozen at the NaN
  alone = victim.make_batched_init("gd")(jax.tree.map(lambda a: a[:1], stacked),
                                         jnp.full((1,), 0.1))
  alone, _ = victim.make_batched_trainer("gd", 3)(alone, jnp.asarray(xs[:1]),
                                                  jnp.asarray(ys[:1]))
  np.testing.assert_array_equal(out.params["W2"][0], alone.params["W2"][0])


def _tiny_config(cifar_dir, **overrides):
  c = victims_config.get_config("tiny")
  c.data_dir = cifar_dir
  c.num_victims = 2
  c.n_per_class = 10
  c.width = 100
  c.epochs = 40
  c.chunk_epochs = 20
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_training_on_real_cifar_reaches_full_train_accuracy(cifar_dir, tmp_path):
  batch = victim.train_victims(_tiny_config(cifar_dir, epochs=200, chunk_epochs=100),
                               str(tmp_path), progress=False)
  report = victim.victim_report(batch)
  assert report["train_accuracy"] == [1.0, 1.0]
  assert min(report["min_margin"]) > 0
  assert len(set(map(tuple, batch.indices.tolist()))) == 2   # different data per victim


def test_killed_training_resumes_where_it_stopped(cifar_dir, tmp_path):
  straight = victim.train_victims(_tiny_config(cifar_dir), str(tmp_path / "a"), progress=False)
  victim.train_victims(_tiny_config(cifar_dir, epochs=20), str(tmp_path / "b"), progress=False)
  restored = victim.restore_victims(str(tmp_path / "b"))
  np.testing.assert_array_equal(restored.state.epoch, [20, 20])
  resumed = victim.train_victims(_tiny_config(cifar_dir), str(tmp_path / "b"), progress=False)
  for name in straight.state.params:
    np.testing.assert_array_equal(resumed.state.params[name], straight.state.params[name])
  np.testing.assert_array_equal(resumed.indices, straight.indices)


def test_restore_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no victim checkpoint"):
    victim.restore_victims(str(tmp_path))
  c = ml_collections.ConfigDict(victims_config.get_config("tiny"))
  c.recipe = "sgd"
  with pytest.raises(ValueError, match="unknown victim recipe"):
    victim.train_victims(c, str(tmp_path), progress=False)
