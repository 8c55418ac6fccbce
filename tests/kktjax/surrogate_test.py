"""Tests for kktjax.surrogate: exact relu forward, sigmoid(αz) derivative at every order."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktjax.surrogate import surrogate_relu


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _sigmoid(t):
  with np.errstate(over="ignore"):  # exp(-t) = inf for very negative t gives exactly 0.
    return 1.0 / (1.0 + np.exp(-t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_is_relu_exactly(dtype):
  with jax.enable_x64(dtype == np.float64):
    z = np.array([-1e30, -3.0, -1e-30, -0.0, 0.0, 1e-30, 0.25, 7.0, 1e30], dtype)
    out = np.asarray(jax.jit(surrogate_relu)(jnp.asarray(z), jnp.asarray(20.0, dtype)))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.maximum(z, 0))
    # softplus_α(0) = ln2/α would be 0.035 at α = 20; the surrogate must give exactly 0.
    assert out[4] == 0.0


def test_first_derivative_is_sigmoid(x64):
  z = np.linspace(-2.0, 2.0, 41)
  for alpha in (1.0, 20.0, 500.0):
    g = jax.grad(lambda z: jnp.sum(surrogate_relu(z, alpha)))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(g), _sigmoid(alpha * z), rtol=1e-15, atol=1e-300)


def test_cotangent_weights_and_alpha_gets_zero(x64):
  z = np.array([-0.3, 0.1, 0.7])
  w = np.array([2.0, -1.5, 0.25])
  alpha = jnp.asarray(4.0)
  gz, ga = jax.grad(lambda z, a: jnp.sum(w * surrogate_relu(z, a)), argnums=(0, 1))(
      jnp.asarray(z), alpha)
  np.testing.assert_allclose(np.asarray(gz), w * _sigmoid(4.0 * z), rtol=1e-15)
  assert float(ga) == 0.0


def test_second_derivative_follows_haim_backward(x64):
  # Haim's backward g·σ(αz) is differentiated normally: d/dz = α·σ(1−σ)·g.
  z = np.linspace(-1.0, 1.0, 11)
  alpha = 3.0
  first = lambda z: jax.grad(lambda z: jnp.sum(surrogate_relu(z, alpha)))(z)
  second = jax.grad(lambda z: jnp.sum(first(z)))(jnp.asarray(z))
  s = _sigmoid(alpha * z)
  np.testing.assert_allclose(np.asarray(second), alpha * s * (1 - s), rtol=1e-14)


def test_vmap_over_per_run_alpha(x64):
  z = np.linspace(-1.0, 1.0, 7)
  alphas = np.array([10.0, 37.5, 500.0])
  grad_one = lambda a: jax.grad(lambda z: jnp.sum(surrogate_relu(z, a)))(jnp.asarray(z))
  got = jax.jit(jax.vmap(grad_one))(jnp.asarray(alphas))
  np.testing.assert_allclose(np.asarray(got), _sigmoid(alphas[:, None] * z[None]), rtol=1e-15)
  # Forward under vmap is still relu for every α.
  fwd = jax.vmap(lambda a: surrogate_relu(jnp.asarray(z), a))(jnp.asarray(alphas))
  np.testing.assert_array_equal(np.asarray(fwd), np.broadcast_to(np.maximum(z, 0), (3, 7)))


def test_broadcast_alpha_array(x64):
  z = np.array([[-0.5, 0.5], [0.1, -0.1]])
  alpha = np.array([[2.0], [30.0]])
  gz, ga = jax.grad(lambda z, a: jnp.sum(surrogate_relu(z, a)), argnums=(0, 1))(
      jnp.asarray(z), jnp.asarray(alpha))
  np.testing.assert_allclose(np.asarray(gz), _sigmoid(alpha * z), rtol=1e-15)
  assert ga.shape == alpha.shape and not np.any(np.asarray(ga))
