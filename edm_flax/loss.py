"""EDM's training loss for the conditional restorer.

ln σ ~ N(P_mean, P_std²), n ~ N(0, σ²I) on the 3 target channels only, and
loss = λ(σ)·‖D(y + n; σ, y_c, aug) − y‖² with λ(σ) = (σ² + σ_d²)/(σσ_d)², summed over C·H·W and
averaged over the batch (EDM's `loss.sum() / batch`).

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
  2022, Table 1; NVlabs/edm@62072d2, `training/loss.py` (`EDMLoss`) and
  `training/training_loop.py`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def edm_weight(sigma, sigma_data: float = 0.5):
  """EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ·σ_d)², i.e. 1/c_out²."""
  sigma = jnp.asarray(sigma)
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data)**2


def edm_loss(apply_fn: Callable[..., jax.Array], params: Any, rng: jax.Array,
             clean: jax.Array, condition: jax.Array | None, augment_labels: jax.Array | None, *,
             P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5,
             train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """EDM loss on one batch.

  Args:
    apply_fn: the denoiser, called as
      `apply_fn(params, x_noisy, sigma, condition, augment_labels, train=train,
      rngs={"dropout": key})` with sigma of shape [B, 1, 1, 1]; it returns D like `clean`.
      `EDMPrecond.apply` with `params={"params": p}` fits directly.
    params: passed unchanged as apply_fn's first argument.
    rng: PRNG key; split into σ, noise and dropout keys.
    clean: [B, H, W, C] clean (augmented) targets y in [−1, 1].
    condition: [B, H, W, C_cond] condition y_c in [−1, 1] (never noised), or None.
    augment_labels: [B, 9] labels of the augmentation applied to `clean`, or None.
    P_mean: mean of ln σ.
    P_std: standard deviation of ln σ.
    sigma_data: σ_d of the weight.
    train: passed to apply_fn (enables dropout).

  Returns:
    (loss, aux): the scalar loss (sum over C·H·W, mean over the batch) and a dict with
    `sigma` [B] and `loss_per_example` [B].
  """
  if clean.ndim != 4:
    raise ValueError(f"edm_loss: clean must be [B,H,W,C], got {clean.shape}.")
  batch = clean.shape[0]
  if condition is not None and condition.shape[:3] != clean.shape[:3]:
    raise ValueError(f"edm_loss: condition {condition.shape} does not match clean {clean.shape}.")
  if augment_labels is not None and (augment_labels.ndim != 2
                                     or augment_labels.shape[0] != batch):
    raise ValueError(f"edm_loss: augment_labels must be [{batch},D], got {augment_labels.shape}.")
  sigma_key, noise_key, dropout_key = jax.random.split(rng, 3)
  y = clean.astype(jnp.float32) if clean.dtype != jnp.float64 else clean
  rnd_normal = jax.random.normal(sigma_key, (batch, 1, 1, 1), y.dtype)
  sigma = jnp.exp(rnd_normal * P_std + P_mean)
  weight = edm_weight(sigma, sigma_data)
  n = jax.random.normal(noise_key, y.shape, y.dtype) * sigma
  denoised = apply_fn(params, y + n, sigma, condition, augment_labels, train=train,
                      rngs={"dropout": dropout_key})
  if denoised.shape != y.shape:
    raise ValueError(f"edm_loss: apply_fn returned {denoised.shape}, expected {y.shape}.")
  per_example = jnp.sum(weight * jnp.square(denoised.astype(y.dtype) - y), axis=(1, 2, 3))
  return jnp.mean(per_example), {"sigma": sigma.reshape(batch), "loss_per_example": per_example}
