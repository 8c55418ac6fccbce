"""Tests of edm_flax.sampler (EDM's Heun sampler, SPEC §7.6)."""

import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np
import pytest

from edm_flax import sampler

_SPEC_STEPS = [80, 57.58598, 40.78557, 28.37458, 19.35245, 12.91008, 8.400935, 5.315195, 3.256822,
               1.923340, 1.088171, 0.5853481, 0.2964423, 0.1395165, 0.05994731, 0.02293452,
               0.007528020, 0.002, 0]


def _gaussian_denoiser(x, sigma, sigma_data=0.5):
  """The exact denoiser for data ~ N(0, σ_d² I)."""
  return x * sigma_data**2 / (sigma**2 + sigma_data**2)


def test_schedule_matches_spec():
  t = sampler.sampler_schedule()
  assert t.dtype == np.float64 and t.shape == (19,)
  np.testing.assert_allclose(t, _SPEC_STEPS, rtol=6e-7, atol=0)
  assert t[-1] == 0.0


def test_gaussian_anchor_float32():
  z = jax.random.normal(jax.random.key(0), (3, 4, 4, 3))
  out = jax.jit(lambda z: sampler.edm_sampler(_gaussian_denoiser, z))(z)
  np.testing.assert_allclose(out, 0.5276246370 * np.asarray(z), rtol=2e-6, atol=1e-7)


def test_gaussian_anchor_float64():
  with jax.enable_x64(True):
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5)))
    out = sampler.edm_sampler(_gaussian_denoiser, z)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, 0.5276246370 * np.asarray(z), rtol=1e-9)


@pytest.mark.parametrize("num_steps,nfe", [(18, 35), (5, 9)])
def test_number_of_network_evaluations(num_steps, nfe):
  calls = []

  def count(x):
    calls.append(1)
    return x

  def denoiser(x, sigma):
    x = io_callback(count, jax.ShapeDtypeStruct(x.shape, x.dtype), x, ordered=True)
    return _gaussian_denoiser(x, sigma)

  out = sampler.edm_sampler(denoiser, jnp.ones((2,)), num_steps=num_steps)
  jax.block_until_ready(out)
  assert len(calls) == nfe


def _numpy_edm_sampler(denoise, z, num_steps, s_churn, s_min, s_max, rho=7.0):
  """Algorithm 2 of Karras et al. in float64 NumPy with S_noise = 0 (no random draws)."""
  i = np.arange(num_steps)
  t = (80**(1 / rho) + i / (num_steps - 1) * (0.002**(1 / rho) - 80**(1 / rho)))**rho
  t = np.append(t, 0.0)
  x = z * t[0]
  for n in range(num_steps):
    gamma = min(s_churn / num_steps, np.sqrt(2) - 1) if s_min <= t[n] <= s_max else 0.0
    t_hat = t[n] * (1 + gamma)
    d = (x - denoise(x, t_hat)) / t_hat
    x_next = x + (t[n + 1] - t_hat) * d
    if n < num_steps - 1:
      d2 = (x_next - denoise(x_next, t[n + 1])) / t[n + 1]
      x_next = x + (t[n + 1] - t_hat) * (d + d2) / 2
    x = x_next
  return x


def test_churn_schedule_matches_algorithm_2():
  denoise = lambda x, s: np.tanh(x) * 0.25 / (s**2 + 0.25)  # nonlinear, so errors show
  z = np.random.default_rng(1).standard_normal(6)
  want = _numpy_edm_sampler(denoise, z, 10, s_churn=5.0, s_min=0.05, s_max=50.0)
  jdenoise = lambda x, s: jnp.tanh(x) * 0.25 / (s**2 + 0.25)
  with jax.enable_x64(True):
    got = sampler.edm_sampler(jdenoise, jnp.asarray(z), num_steps=10, S_churn=5.0, S_min=0.05,
                              S_max=50.0, S_noise=0.0, key=jax.random.key(0))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  deterministic = _numpy_edm_sampler(denoise, z, 10, s_churn=0.0, s_min=0.0, s_max=np.inf)
  assert not np.allclose(want, deterministic)


def test_stochastic_sampler_uses_key():
  z = jnp.ones((64,))
  a = sampler.edm_sampler(_gaussian_denoiser, z, S_churn=40, key=jax.random.key(0))
  b = sampler.edm_sampler(_gaussian_denoiser, z, S_churn=40, key=jax.random.key(1))
  assert np.isfinite(a).all() and not np.allclose(a, b)
  with pytest.raises(ValueError, match="key"):
    sampler.edm_sampler(_gaussian_denoiser, z, S_churn=40)
  with pytest.raises(ValueError, match="num_steps"):
    sampler.sampler_schedule(num_steps=1)
