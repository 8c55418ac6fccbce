"""Bias-free DnCNN (BF-DnCNN), the paper's baseline restorer.

A 20-layer DnCNN with every additive constant removed: convolutions without biases and a
batch norm that neither subtracts the mean nor adds a shift. The network is then positively
homogeneous in eval mode, f(a·y) = a·f(y) for a > 0.

References:
  Mohan, Kadkhodaie, Simoncelli, Fernandez-Granda, "Robust and interpretable blind image
  denoising via bias-free convolutional neural networks", ICLR 2020
  (LabForComputationalVision/bias_free_denoising@64930f0).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Mohan: γ ~ N(0, 2/(9·64)) clipped to ±0.025, so most start at the clip value.
GAMMA_STD = (2.0 / 9.0 / 64.0) ** 0.5
GAMMA_CLIP = 0.025


def gamma_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """γ initialiser of Mohan's BF-BatchNorm: clip(N(0, 2/(9·64)), ±0.025)."""
  return jnp.clip(GAMMA_STD * jax.random.normal(key, shape, dtype), -GAMMA_CLIP, GAMMA_CLIP)


class BFBatchNorm(nn.Module):
  """Bias-free batch norm over the channel (last) axis.

  Training: y = γ_c·x/(√σ²_c + eps) with σ²_c the *unbiased* variance of channel c over
  (N, H, W); the mean is not subtracted. running_var ← (1−momentum)·running_var + momentum·σ²_c,
  starting at 1 (in the `batch_stats` collection). Eval: y = γ_c·x/(√running_var_c + eps).

  Attributes:
    momentum: weight of the new batch variance in the running average.
    epsilon: added to the standard deviation (not to the variance).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', gamma_init, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'running_var',
                                lambda: jnp.ones((channels,), jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      var = jnp.var(x, axis=axes, ddof=1)
      if not self.is_initializing():
        running_var.value = (1.0 - self.momentum) * running_var.value + self.momentum * var
    else:
      var = running_var.value
    return x * (scale / (jnp.sqrt(var) + self.epsilon)).astype(x.dtype)


class BFDnCNN(nn.Module):
  """BF-DnCNN: f(y) = y − net(y).

  net = Conv3×3(C→F) → ReLU → (depth−2)×[Conv3×3(F→F) → BF-BatchNorm → ReLU] → Conv3×3(F→C),
  with no biases and zero 'SAME' padding. The default sizes give 668,160 parameters for C = 3.

  Attributes:
    features: hidden channels F.
    depth: number of convolutions.
    channels: image channels C.
  """
  features: int = 64
  depth: int = 20
  channels: int = 3

  @nn.compact
  def __call__(self, y: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: y [..., H, W, C] noisy images. Returns f(y) with the same shape."""
    # Mohan initialise with N(0, 2/fan_in) (not truncated, unlike he_normal).
    kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
    conv = lambda f, name: nn.Conv(f, (3, 3), padding='SAME', use_bias=False,
                                   kernel_init=kernel_init, name=name)
    h = nn.relu(conv(self.features, 'conv0')(y))
    for i in range(1, self.depth - 1):
      h = conv(self.features, f'conv{i}')(h)
      h = BFBatchNorm(name=f'bn{i}')(h, train=train)
      h = nn.relu(h)
    h = conv(self.channels, f'conv{self.depth - 1}')(h)
    return y - h


def dncnn_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mohan's loss Σ(f(y) − x)² / (2·batch)."""
  return jnp.sum(jnp.square(pred - target)) / (2.0 * pred.shape[0])
