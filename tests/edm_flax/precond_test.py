"""Tests of edm_flax.precond (EDM preconditioning with a condition) against SPEC §7.4."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_flax import loss
from edm_flax import precond
from edm_flax.configs import default


class _Probe(nn.Module):
  """Stand-in for SongUNet: returns a chosen view of what EDMPrecond feeds it."""
  mode: str
  in_channels: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, augment_labels=None, *, train=False):
    del train
    if self.mode == "zero":
      return jnp.zeros(x.shape[:3] + (3,), x.dtype)
    if self.mode == "target_in":
      return x[..., :3]
    if self.mode == "condition_in":
      return x[..., 3:6]
    if self.mode == "noise_labels":
      return jnp.broadcast_to(noise_labels[:, None, None, None], x.shape[:3] + (3,))
    if self.mode == "augment":
      return jnp.broadcast_to(augment_labels[:, None, None, :3], x.shape[:3] + (3,))
    raise ValueError(self.mode)


def _apply(mode, x, sigma, cond, aug=None, **kw):
  model = precond.EDMPrecond(model=_Probe(mode), **kw)
  return np.asarray(model.apply({}, x, sigma, cond, aug))


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((3, 4, 4, 3)), jnp.float32)
  cond = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
  sigma = jnp.array([0.002, 0.5, 80.0])
  return x, cond, sigma


@pytest.mark.parametrize("sigma,want", [
    (0.002, (0.999984, 0.0019999840, 1.999984, -1.553652)),
    (0.5, (0.5, 0.353553, 1.414214, -0.173287)),
    (80.0, (3.906e-5, 0.499990, 0.0124998, 1.095507)),
])
def test_coefficients_match_spec(sigma, want):
  got = np.array(precond.edm_coefficients(jnp.float32(sigma), 0.5), np.float64)
  # Tolerance: the 6–7 digits SPEC prints (4 for c_skip at σ = 80).
  rtol = np.array([3e-4 if sigma == 80 else 5e-6, 5e-6, 5e-6, 5e-6])
  assert np.all(np.abs(got - want) <= rtol * np.abs(want)), (got, want)


def test_weight_times_c_out_squared_is_one():
  sigma = np.exp(np.linspace(-7, 5, 50))
  c_out = precond.edm_coefficients(jnp.asarray(sigma, jnp.float32))[1]
  np.testing.assert_allclose(loss.edm_weight(jnp.asarray(sigma, jnp.float32)) * c_out**2, 1.0,
                             rtol=1e-5)


def test_skip_term_uses_only_target_channels():
  x, cond, sigma = _data()
  c_skip = 0.25 / (np.asarray(sigma)**2 + 0.25)
  d1 = _apply("zero", x, sigma, cond)
  d2 = _apply("zero", x, sigma, -3 * cond)
  assert d1.shape == (3, 4, 4, 3)
  np.testing.assert_allclose(d1, c_skip[:, None, None, None] * np.asarray(x), rtol=1e-6)
  np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("scale_condition", [True, False])
def test_network_inputs_and_output_scaling(scale_condition):
  x, cond, sigma = _data(1)
  s = np.asarray(sigma, np.float64)[:, None, None, None]
  c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / np.sqrt(s**2 + 0.25), 1 / np.sqrt(
      s**2 + 0.25)
  xs, cs = np.asarray(x, np.float64), np.asarray(cond, np.float64)
  got = _apply("target_in", x, sigma, cond, scale_condition=scale_condition)
  np.testing.assert_allclose(got, c_skip * xs + c_out * c_in * xs, rtol=1e-5, atol=1e-6)
  got = _apply("condition_in", x, sigma, cond, scale_condition=scale_condition)
  cond_seen = c_in * cs if scale_condition else cs
  np.testing.assert_allclose(got, c_skip * xs + c_out * cond_seen, rtol=1e-5, atol=1e-6)
  got = _apply("noise_labels", x, sigma, cond)
  np.testing.assert_allclose(got, c_skip * xs + c_out * np.log(s) / 4, rtol=1e-5, atol=1e-6)
  aug = jnp.arange(27, dtype=jnp.float32).reshape(3, 9)
  got = _apply("augment", x, sigma, cond, aug)
  np.testing.assert_allclose(got, c_skip * xs + c_out * np.asarray(aug)[:, None, None, :3],
                             rtol=1e-5, atol=1e-6)


def test_sigma_shapes_broadcast():
  x, cond, _ = _data(2)
  a = _apply("noise_labels", x, 0.7, cond)
  b = _apply("noise_labels", x, jnp.full((3,), 0.7), cond)
  c = _apply("noise_labels", x, jnp.full((3, 1, 1, 1), 0.7), cond)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)


def test_bad_inputs_raise_value_error():
  x, cond, sigma = _data(3)
  with pytest.raises(ValueError, match="condition"):
    _apply("zero", x, sigma, cond[..., :2])
  with pytest.raises(ValueError, match="condition"):
    _apply("zero", x, sigma, None)
  with pytest.raises(ValueError, match="x_noisy"):
    _apply("zero", jnp.concatenate([x, x], -1), sigma, cond)
  with pytest.raises(ValueError, match="sigma"):
    _apply("zero", x, jnp.ones((2,)), cond)


def test_make_model_from_config():
  config = default.get_config("tiny")
  config.precond.scale_condition = False
  model = precond.make_model(config)
  assert model.model.model_channels == 16 and model.model.channel_mult == (1, 2)
  assert not model.scale_condition and model.sigma_data == 0.5
  with pytest.raises(ValueError, match="variant"):
    default.get_config("huge")
