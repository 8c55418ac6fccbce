"""Tests of edm_flax.loss (EDM loss, SPEC §7.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_flax import loss
from edm_flax import precond
from edm_flax.configs import default


def _batch(b=4, hw=8, seed=0):
  rng = np.random.default_rng(seed)
  clean = jnp.asarray(rng.uniform(-1, 1, (b, hw, hw, 3)), jnp.float32)
  cond = jnp.asarray(rng.uniform(-1, 1, (b, hw, hw, 3)), jnp.float32)
  aug = jnp.asarray(rng.standard_normal((b, 9)), jnp.float32)
  return clean, cond, aug


def test_weight_formula():
  sigma = np.exp(np.linspace(-6, 4.5, 40))
  want = (sigma**2 + 0.25) / (sigma * 0.5)**2
  np.testing.assert_allclose(loss.edm_weight(jnp.asarray(sigma, jnp.float32)), want, rtol=1e-6)
  np.testing.assert_allclose(loss.edm_weight(jnp.float32(2.0), sigma_data=1.0), 5 / 4, rtol=1e-7)


def test_loss_is_zero_for_perfect_denoiser():
  clean, cond, aug = _batch()
  oracle = lambda params, x, sigma, c, a, *, train, rngs: clean
  value, aux = loss.edm_loss(oracle, None, jax.random.key(0), clean, cond, aug)
  assert float(value) == 0.0
  np.testing.assert_array_equal(aux["loss_per_example"], 0.0)


def test_reduction_and_weight():
  clean, cond, aug = _batch(b=6, hw=5)
  # D = y + 1 everywhere: per-example loss = λ(σ)·C·H·W; the loss is its batch mean.
  off_by_one = lambda params, x, sigma, c, a, *, train, rngs: clean + 1
  value, aux = loss.edm_loss(off_by_one, None, jax.random.key(1), clean, cond, aug)
  sigma = np.asarray(aux["sigma"], np.float64)
  per_example = (sigma**2 + 0.25) / (sigma * 0.5)**2 * 3 * 5 * 5
  np.testing.assert_allclose(aux["loss_per_example"], per_example, rtol=1e-5)
  np.testing.assert_allclose(value, per_example.mean(), rtol=1e-5)


def test_noise_only_on_target_and_sigma_distribution():
  b, hw = 2048, 16
  clean, cond, aug = _batch(b=b, hw=hw, seed=2)
  seen = {}

  def probe(params, x, sigma, c, a, *, train, rngs):
    seen.update(x=x, sigma=sigma, c=c, a=a, train=train, rngs=rngs, params=params)
    return x

  _, aux = loss.edm_loss(probe, "P", jax.random.key(3), clean, cond, aug, P_mean=-0.4,
                         P_std=0.7, train=False)
  assert seen["params"] == "P" and seen["train"] is False and "dropout" in seen["rngs"]
  assert seen["sigma"].shape == (b, 1, 1, 1)
  np.testing.assert_array_equal(seen["c"], cond)  # the condition is never noised
  np.testing.assert_array_equal(seen["a"], aug)
  log_sigma = np.log(np.asarray(aux["sigma"], np.float64))
  assert abs(log_sigma.mean() + 0.4) < 4 * 0.7 / np.sqrt(b)
  assert abs(log_sigma.std() - 0.7) < 0.05
  # n = x_noisy − y has std σ per example.
  n = (np.asarray(seen["x"], np.float64) - np.asarray(clean, np.float64))
  ratio = n.reshape(b, -1).std(axis=1) / np.asarray(aux["sigma"])
  np.testing.assert_allclose(ratio, 1.0, atol=0.15)  # ~6 standard errors of a std over 768


def test_bad_shapes_raise_value_error():
  clean, cond, aug = _batch()
  ident = lambda params, x, sigma, c, a, *, train, rngs: x
  with pytest.raises(ValueError, match="condition"):
    loss.edm_loss(ident, None, jax.random.key(0), clean, cond[:, :4], aug)
  with pytest.raises(ValueError, match="augment_labels"):
    loss.edm_loss(ident, None, jax.random.key(0), clean, cond, aug[:2])
  with pytest.raises(ValueError, match="clean"):
    loss.edm_loss(ident, None, jax.random.key(0), clean[0], cond, aug)


def test_with_tiny_edm_precond_model_apply():
  """`EDMPrecond.apply` plugs in directly; the training loss is finite and uses dropout."""
  model = precond.make_model(default.get_config("tiny"))
  clean, cond, aug = _batch(b=2, hw=32, seed=4)
  # Any params will do here; eval_shape avoids compiling the initialisers.
  shapes = jax.eval_shape(model.init, jax.random.key(0), clean, jnp.ones((2,)), cond, aug)
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype),
                        shapes)

  @jax.jit
  def run(params, key):
    return loss.edm_loss(model.apply, params, key, clean, cond, aug)

  value, aux = run(params, jax.random.key(5, impl="rbg"))  # rbg: quick to compile on CPU
  assert np.isfinite(float(value)) and aux["loss_per_example"].shape == (2,)
