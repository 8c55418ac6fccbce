"""kktjax's KKT loss and its (x, λ)-gradient equal the PyTorch baseline's (Haim's semantics).

The PyTorch side (benchmarks/torch_baseline.py) is an independent implementation in the style
of Haim et al.'s code: a `torch.autograd.Function` surrogate ReLU differentiated twice through
`create_graph=True`. Both run in float64 on identical weights and inputs; the box and λ
penalties are active (some x outside [−1, 1], about half of λ below λ_min).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; it comes with the 'bench' extra "
    "(pip install -e '.[bench]', i.e. torch==2.13.0)")

from benchmarks import torch_baseline  # pylint: disable=g-import-not-at-top
from kktjax import kkt  # pylint: disable=g-import-not-at-top
from kktjax import victim  # pylint: disable=g-import-not-at-top


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("loss_name", ["kkt_loss", "kkt_loss_fast"])
@pytest.mark.parametrize("input_dim,width,num,first_layer_bias,alpha,lambda_min", [
    (48, 20, 10, False, 20.0, 0.5),
    (3072, 100, 20, True, 137.0, 0.21),
])
def test_kkt_loss_and_grad_match_torch(x64, loss_name, input_dim, width, num, first_layer_bias,
                                       alpha, lambda_min):
  """Every form of the loss kkt.py offers (the attack step may use the faster one)."""
  del x64
  if not hasattr(kkt, loss_name):
    pytest.skip(f"kktjax.kkt has no {loss_name}")
  loss_fn = getattr(kkt, loss_name)
  params = victim.init_params(jax.random.PRNGKey(3), width, input_dim=input_dim,
                              first_layer_bias=first_layer_bias, w1_std=0.05,
                              dtype=jnp.float64)
  rng = np.random.default_rng(0)
  x = rng.normal(0.0, 0.05, (num, input_dim))
  x[0, :3] = (1.5, -1.3, 2.0)  # Outside the box: L_box > 0.
  lam = rng.uniform(0.0, 1.0, num)
  y = kkt.candidate_labels(num // 2, jnp.float64)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
  (loss, aux), (gx, glam) = grad_fn(
      jnp.asarray(x), jnp.asarray(lam), params, y, jnp.float64(alpha), jnp.float64(lambda_min))
  loss_t, loss_kkt_t, gx_t, glam_t = torch_baseline.kkt_loss_and_grads(
      {k: np.asarray(v) for k, v in params.items()}, x, lam, alpha, lambda_min,
      dtype=torch.float64)

  assert float(aux.loss_box) > 0 and float(aux.loss_lambda) > 0
  np.testing.assert_allclose(float(loss), loss_t, rtol=1e-10)
  np.testing.assert_allclose(float(aux.loss_kkt), loss_kkt_t, rtol=1e-10)
  assert _relative_error(gx, gx_t) < 1e-10
  assert _relative_error(glam, glam_t) < 1e-10


def test_torch_surrogate_differs_from_plain_relu_semantics(x64):
  """Control: the check above can tell Haim's semantics from plain ReLU's."""
  del x64
  params = victim.init_params(jax.random.PRNGKey(4), 20, input_dim=48, w1_std=0.05,
                              dtype=jnp.float64)
  rng = np.random.default_rng(1)
  x, lam = rng.normal(0.0, 0.05, (10, 48)), rng.uniform(0.0, 1.0, 10)
  y = kkt.candidate_labels(5, jnp.float64)
  plain = lambda z, alpha: jax.nn.relu(z)
  grad_fn = jax.jit(jax.grad(kkt.kkt_loss, argnums=0, has_aux=True), static_argnums=6)
  gx, _ = grad_fn(jnp.asarray(x), jnp.asarray(lam), params, y, jnp.float64(20.0),
                  jnp.float64(0.5), plain)
  _, _, gx_t, _ = torch_baseline.kkt_loss_and_grads(
      {k: np.asarray(v) for k, v in params.items()}, x, lam, 20.0, 0.5, dtype=torch.float64)
  assert _relative_error(gx, gx_t) > 1e-3
