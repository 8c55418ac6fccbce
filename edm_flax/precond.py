"""EDM preconditioning around a conditional SongUNet.

D(x; σ, y_c) = c_skip·x + c_out·F(c_in·[x, y_c], c_noise, aug), where x holds the 3 noisy target
channels and y_c the condition channels. The paper's only changes to EDM's `EDMPrecond` are the
6 input channels and a skip term over the target channels alone. By default c_in scales the
condition as well (the paper ran EDMPrecond unchanged); `scale_condition=False` feeds the
condition unscaled.

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
  2022, Table 1; NVlabs/edm@62072d2, `training/networks.py` (`EDMPrecond`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from edm_flax import networks


def edm_coefficients(sigma, sigma_data: float = 0.5):
  """EDM's preconditioning coefficients.

  Args:
    sigma: noise level(s), any shape (array or float).
    sigma_data: standard deviation of the data.

  Returns:
    (c_skip, c_out, c_in, c_noise), each shaped like sigma:
    c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4.
  """
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  c_skip = sigma_data**2 / total
  c_out = sigma * sigma_data / jnp.sqrt(total)
  c_in = 1 / jnp.sqrt(total)
  c_noise = jnp.log(sigma) / 4
  return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
  """EDM's preconditioned denoiser D for a conditional restorer.

  Attributes:
    model: the raw network F, a `SongUNet` instance (its params live under 'model'). Its
      `in_channels` must be img_channels + condition channels and `out_channels` img_channels.
    sigma_data: standard deviation of the data.
    img_channels: channels of the noisy target x (and of D).
    scale_condition: multiply the condition by c_in as well (default, the paper's unchanged
      EDMPrecond); False feeds it unscaled.
  """
  model: nn.Module
  sigma_data: float = 0.5
  img_channels: int = 3
  scale_condition: bool = True

  @nn.compact
  def __call__(self, x_noisy: jax.Array, sigma: jax.Array, condition: jax.Array | None,
               augment_labels: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """Denoises x_noisy.

    Args:
      x_noisy: [B, H, W, img_channels] noisy target.
      sigma: noise level: a scalar, [B] or [B, 1, 1, 1].
      condition: [B, H, W, C_cond] condition (the post-processed reconstruction in [−1, 1]), or
        None when the model has exactly img_channels inputs.
      augment_labels: [B, augment_dim] or None (= zeros).
      train: enables dropout in the model (needs a 'dropout' rng).

    Returns:
      D: [B, H, W, img_channels], float32 (float64 if the model's dtype is float64).
    """
    dtype = jnp.float64 if jnp.dtype(self.model.dtype) == jnp.float64 else jnp.float32
    if x_noisy.ndim != 4 or x_noisy.shape[-1] != self.img_channels:
      raise ValueError(f"EDMPrecond: x_noisy must be [B,H,W,{self.img_channels}], "
                       f"got {x_noisy.shape}.")
    batch = x_noisy.shape[0]
    cond_channels = self.model.in_channels - self.img_channels
    if cond_channels:
      if condition is None or condition.shape != x_noisy.shape[:3] + (cond_channels,):
        got = None if condition is None else condition.shape
        raise ValueError(f"EDMPrecond: condition must be {x_noisy.shape[:3] + (cond_channels,)}, "
                         f"got {got}.")
    elif condition is not None:
      raise ValueError("EDMPrecond: condition given but the model has no condition channels.")
    sigma = jnp.asarray(sigma, dtype)
    if sigma.size not in (1, batch):
      raise ValueError(f"EDMPrecond: sigma must be a scalar or have {batch} entries, "
                       f"got shape {sigma.shape}.")
    sigma = jnp.broadcast_to(sigma.reshape(-1), (batch,)).reshape(batch, 1, 1, 1)

    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
    x = x_noisy.astype(dtype)
    if cond_channels:
      y = condition.astype(dtype)
      inputs = jnp.concatenate([c_in * x, c_in * y if self.scale_condition else y], axis=-1)
    else:
      inputs = c_in * x
    f = self.model(inputs.astype(self.model.dtype), c_noise.reshape(batch), augment_labels,
                   train=train)
    return c_skip * x + c_out * f.astype(dtype)


def make_model(config: ml_collections.ConfigDict) -> EDMPrecond:
  """Builds EDMPrecond(SongUNet) from a config with `network` and `precond` sections.

  `config.network` holds SongUNet's fields (its `dtype` may be a string such as "float32").
  """
  net_kwargs: dict[str, Any] = dict(config.network)
  net_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in net_kwargs.items()}
  if "dtype" in net_kwargs:
    net_kwargs["dtype"] = jnp.dtype(net_kwargs["dtype"])
  return EDMPrecond(model=networks.SongUNet(**net_kwargs), **dict(config.precond))
