"""The surrogate ReLU of the KKT attack: exact relu forward, sigmoid(α·z) derivative.

The derivative of relu is replaced by σ(αz), the derivative of softplus_α(z) = ln(1+e^{αz})/α,
while the forward value stays relu(z). This matches Haim et al.'s `ModifiedReluFunc`, whose
backward is built from differentiable ops and differentiated again (create_graph).

Why the fwd rule calls `surrogate_relu` itself (SPEC §3.2): the attack differentiates a VJP.
The outer differentiation then goes through the *fwd* rule of the inner VJP, and the primal
output h = relu(z) computed there feeds the weight gradients (δ2·h1ᵀ, Σc·h2). If fwd computed
`jnp.maximum(z, 0)`, the outer pass would use relu's step derivative for those h terms and
∂L/∂x would be wrong (57-68% relative error measured). Calling the custom function itself makes
every differentiation of h see σ(αz), as in PyTorch.

References:
  Haim et al., "Reconstructing Training Data from Trained Neural Networks", NeurIPS 2022.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def surrogate_relu(z: jax.Array, alpha: jax.Array) -> jax.Array:
  """relu(z) in the forward pass; d/dz = sigmoid(alpha·z) in every backward pass.

  Args:
    z: pre-activations.
    alpha: sharpness, an ordinary (traceable, vmappable) array broadcastable against z.
      It receives a zero cotangent.

  Returns:
    relu(z), exactly.
  """
  return jnp.maximum(z, jnp.zeros((), z.dtype))


def _surrogate_relu_fwd(z, alpha):
  # Self-call, not jnp.maximum: see the module docstring.
  return surrogate_relu(z, alpha), (z, alpha)


def _surrogate_relu_bwd(res, g):
  z, alpha = res
  return g * jax.nn.sigmoid(alpha * z), jnp.zeros_like(alpha)


surrogate_relu.defvjp(_surrogate_relu_fwd, _surrogate_relu_bwd)
