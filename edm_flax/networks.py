"""DDPM++ U-Net (EDM's `SongUNet`) in Flax.

A layer-for-layer port of the DDPM++ configuration of `SongUNet` in NVlabs/edm
(`training/networks.py`): positional noise embedding, "standard" encoder and decoder, UNetBlocks
with additive embedding, single-head self-attention and `[1,1]` resampling. Images are NHWC.

Submodules take EDM's module keys, with the `enc.`/`dec.` prefix joined by an underscore so that
every key is a plain identifier: EDM's `enc.32x32_block0` is `enc_32x32_block0` here and
`dec.16x16_up` is `dec_16x16_up`; inside a block the keys are EDM's (`norm0`, `conv0`, `affine`,
`norm1`, `conv1`, `skip`, `norm2`, `qkv`, `proj`). Leaves are Flax's `kernel`/`bias`/`scale`.
One layout difference: the `qkv` kernel stores its 3C output channels as [q | k | v] blocks,
while EDM interleaves them (channel 3c+j); `edm_flax.convert` permutes them.

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
  2022; NVlabs/edm@62072d2, `training/networks.py`.
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR
  2021 (DDPM++).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# EDM's three initialisers: xavier-uniform times a multiplier m is variance_scaling(m², fan_avg).
init_default = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
init_zero = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")  # multiplier 1e-5
init_attn = nn.initializers.variance_scaling(0.2, "fan_avg", "uniform")  # multiplier sqrt(0.2)

_SKIP_SCALE = float(np.sqrt(0.5))
_EPS = 1e-6


def resample_kernel(resample_filter: Sequence[float]) -> np.ndarray:
  """The 2-D resampling filter outer(f, f) / sum(f)², a float64 NumPy constant [k, k]."""
  f = np.asarray(resample_filter, dtype=np.float64)
  return np.outer(f, f) / np.square(f.sum())


def downsample(x: jax.Array, resample_filter: Sequence[float]) -> jax.Array:
  """Depthwise stride-2 convolution with the resampling filter (2×2 mean pooling for [1,1])."""
  f = resample_kernel(resample_filter)
  pad = (f.shape[0] - 1) // 2
  channels = x.shape[-1]
  kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, channels)), dtype=x.dtype)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(2, 2), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def upsample(x: jax.Array, resample_filter: Sequence[float]) -> jax.Array:
  """Depthwise stride-2 transposed convolution with 4× the filter (nearest ×2 for [1,1])."""
  f = resample_kernel(resample_filter) * 4
  k = f.shape[0]
  pad = (k - 1) // 2
  channels = x.shape[-1]
  # A transposed convolution is a convolution of the zero-stuffed input with the flipped kernel.
  f = f[::-1, ::-1]
  kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, channels)), dtype=x.dtype)
  edge = k - 1 - pad
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((edge, edge), (edge, edge)),
      lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels)


class Conv2d(nn.Module):
  """EDM's `Conv2d`: optional resampling (before the convolution), then a k×k convolution.

  Attributes:
    features: output channels.
    kernel: kernel size; 0 means resampling only, with no parameters.
    use_bias: whether to add a bias (initialised to zero).
    up: nearest-style ×2 upsampling with the resampling filter before the convolution.
    down: ×2 downsampling with the resampling filter before the convolution.
    resample_filter: the 1-D resampling filter; a constant, never a parameter.
    kernel_init: initialiser of the HWIO kernel.
    dtype: computation dtype.
  """
  features: int
  kernel: int
  use_bias: bool = True
  up: bool = False
  down: bool = False
  resample_filter: Sequence[float] = (1, 1)
  kernel_init: nn.initializers.Initializer = init_default
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    if self.up:
      x = upsample(x, self.resample_filter)
    if self.down:
      x = downsample(x, self.resample_filter)
    if self.kernel:
      w = self.param("kernel", self.kernel_init,
                     (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
      pad = self.kernel // 2
      x = jax.lax.conv_general_dilated(
          x, w.astype(self.dtype), window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      if self.use_bias:
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x = x + b.astype(self.dtype)
    return x


def group_norm(channels: int, name: str, dtype: Dtype) -> nn.GroupNorm:
  """EDM's GroupNorm: min(32, C // 4) groups, eps 1e-6, two-pass variance."""
  return nn.GroupNorm(num_groups=min(32, channels // 4), epsilon=_EPS, use_fast_variance=False,
                      dtype=dtype, name=name)


def positional_embedding(noise_labels: jax.Array, num_channels: int,
                         max_positions: int = 10000) -> jax.Array:
  """DDPM++ noise embedding, endpoint=True, ordered [sin(c·f), cos(c·f)] as SongUNet uses it.

  Args:
    noise_labels: [B] noise conditioning values c_noise.
    num_channels: embedding width (even).
    max_positions: the base of the geometric frequency ladder.

  Returns:
    [B, num_channels] array with f_k = (1/max_positions)^(k/(num_channels/2 − 1)).
  """
  half = num_channels // 2
  freqs = (1.0 / max_positions) ** (np.arange(half, dtype=np.float64) / (half - 1))
  freqs = jnp.asarray(freqs.astype(np.float32), dtype=noise_labels.dtype)
  x = noise_labels[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


class UNetBlock(nn.Module):
  """EDM's UNetBlock with DDPM++ settings (additive embedding, single-head attention).

  Attributes:
    out_channels: output channels.
    up: upsample ×2 (conv0 and skip resample before convolving).
    down: downsample ×2.
    attention: append a single-head self-attention layer.
    dropout: dropout rate before conv1 (training only; uses the 'dropout' rng).
    resample_filter: the 1-D resampling filter.
    dtype: computation dtype.
  """
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  dropout: float = 0.0
  resample_filter: Sequence[float] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool = False) -> jax.Array:
    in_channels = x.shape[-1]
    c = self.out_channels
    orig = x
    x = Conv2d(c, 3, up=self.up, down=self.down, resample_filter=self.resample_filter,
               dtype=self.dtype, name="conv0")(
                   nn.silu(group_norm(in_channels, "norm0", self.dtype)(x)))
    wide = jnp.promote_types(self.dtype, jnp.float32)  # at least float32
    params = nn.Dense(c, kernel_init=init_default, dtype=wide, name="affine")(emb)
    x = nn.silu(group_norm(c, "norm1", self.dtype)(x + params[:, None, None, :].astype(x.dtype)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Conv2d(c, 3, kernel_init=init_zero, dtype=self.dtype, name="conv1")(x)
    if c != in_channels or self.up or self.down:
      # resample_proj=True: the skip always has a 1×1 projection.
      orig = Conv2d(c, 1, up=self.up, down=self.down, resample_filter=self.resample_filter,
                    dtype=self.dtype, name="skip")(orig)
    x = (x + orig.astype(x.dtype)) * _SKIP_SCALE

    if self.attention:
      b, h, w, _ = x.shape
      qkv = Conv2d(3 * c, 1, kernel_init=init_attn, dtype=self.dtype, name="qkv")(
          group_norm(c, "norm2", self.dtype)(x))
      # Attention in at least fp32 (EDM's AttentionOp uses fp32; float64 stays float64 here).
      q, k, v = jnp.split(qkv.reshape(b, h * w, 3 * c).astype(wide), 3, axis=-1)
      logits = jnp.einsum("bqc,bkc->bqk", q, k / float(np.sqrt(c)))
      weights = jax.nn.softmax(logits, axis=-1)
      a = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c).astype(self.dtype)
      x = (Conv2d(c, 1, kernel_init=init_zero, dtype=self.dtype, name="proj")(a) + x)
      x = x * _SKIP_SCALE
    return x


class SongUNet(nn.Module):
  """EDM's `SongUNet` in the DDPM++ configuration (positional embedding, standard enc/dec).

  Defaults are the paper's conditional CIFAR-10 network (6 input channels: 3 noisy target plus
  3 condition; 9 augmentation labels), 55,737,347 parameters.

  Attributes:
    img_resolution: input and output resolution.
    in_channels: input channels.
    out_channels: output channels.
    label_dim: class-label dimension (0 = unconditional). Labels go in as `class_labels`.
    augment_dim: augmentation-label dimension (0 = none).
    model_channels: base channel count.
    channel_mult: per-resolution channel multipliers.
    channel_mult_emb: embedding width = model_channels * channel_mult_emb.
    num_blocks: residual blocks per resolution.
    attn_resolutions: resolutions with self-attention.
    dropout: dropout rate inside the blocks (training only).
    resample_filter: 1-D resampling filter.
    dtype: computation dtype (parameters are always float32).
  """
  img_resolution: int = 32
  in_channels: int = 6
  out_channels: int = 3
  label_dim: int = 0
  augment_dim: int = 9
  model_channels: int = 128
  channel_mult: Sequence[int] = (2, 2, 2)
  channel_mult_emb: int = 4
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.13
  resample_filter: Sequence[float] = (1, 1)
  dtype: Dtype = jnp.float32

  def _check_inputs(self, x, noise_labels, augment_labels, class_labels):
    r, c = self.img_resolution, self.in_channels
    if r % (2 ** (len(self.channel_mult) - 1)):
      raise ValueError(f"SongUNet: img_resolution {r} does not halve {len(self.channel_mult) - 1} "
                       "times.")
    if x.ndim != 4 or x.shape[1:] != (r, r, c):
      raise ValueError(f"SongUNet: x must be [B,{r},{r},{c}] (NHWC), got {x.shape}.")
    if noise_labels.shape != (x.shape[0],):
      raise ValueError(f"SongUNet: noise_labels must be [{x.shape[0]}], got {noise_labels.shape}.")
    if augment_labels is not None:
      if not self.augment_dim:
        raise ValueError("SongUNet: augment_labels given but augment_dim is 0.")
      if augment_labels.shape != (x.shape[0], self.augment_dim):
        raise ValueError(f"SongUNet: augment_labels must be [{x.shape[0]},{self.augment_dim}], "
                         f"got {augment_labels.shape}.")
    if self.label_dim and (class_labels is None
                           or class_labels.shape != (x.shape[0], self.label_dim)):
      raise ValueError(f"SongUNet: class_labels must be [{x.shape[0]},{self.label_dim}].")
    if not self.label_dim and class_labels is not None:
      raise ValueError("SongUNet: class_labels given but label_dim is 0.")

  @nn.compact
  def __call__(self, x: jax.Array, noise_labels: jax.Array,
               augment_labels: jax.Array | None = None, *, train: bool = False,
               class_labels: jax.Array | None = None) -> jax.Array:
    """Runs the U-Net.

    Args:
      x: [B, R, R, in_channels] input (already scaled by c_in), NHWC.
      noise_labels: [B] noise labels (c_noise = ln(σ)/4), fed raw to the embedding.
      augment_labels: [B, augment_dim] or None, which equals zeros (map_augment has no bias).
      train: enables dropout (needs a 'dropout' rng).
      class_labels: [B, label_dim], only when label_dim > 0.

    Returns:
      [B, R, R, out_channels] output F, in `dtype`.
    """
    self._check_inputs(x, noise_labels, augment_labels, class_labels)
    block = lambda name, c, **kw: UNetBlock(
        c, dropout=self.dropout, resample_filter=self.resample_filter, dtype=self.dtype,
        name=name, **kw)
    noise_channels = self.model_channels
    emb_channels = self.model_channels * self.channel_mult_emb
    # The mapping runs in at least float32, as in EDM, whose noise labels stay float32.
    emb_dtype = jnp.promote_types(self.dtype, jnp.float32)
    dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, kernel_init=init_default,
                                                dtype=emb_dtype, name=name)

    # Mapping.
    emb = positional_embedding(noise_labels.astype(emb_dtype), noise_channels)
    if self.label_dim:
      emb = emb + dense(noise_channels, "map_label")(
          class_labels.astype(emb_dtype) * float(np.sqrt(self.label_dim)))
    if self.augment_dim:
      if augment_labels is None:  # zeros: map_augment has no bias; keeps the param in the tree
        augment_labels = jnp.zeros((x.shape[0], self.augment_dim), emb_dtype)
      emb = emb + dense(noise_channels, "map_augment", bias=False)(augment_labels)
    emb = nn.silu(dense(emb_channels, "map_layer0")(emb))
    emb = nn.silu(dense(emb_channels, "map_layer1")(emb))

    # Encoder.
    x = x.astype(self.dtype)
    skips = []
    cout = self.in_channels
    for level, mult in enumerate(self.channel_mult):
      res = self.img_resolution >> level
      if level == 0:
        cout = self.model_channels
        x = Conv2d(cout, 3, dtype=self.dtype, name=f"enc_{res}x{res}_conv")(x)
      else:
        x = block(f"enc_{res}x{res}_down", cout, down=True)(x, emb, train=train)
      skips.append(x)
      for idx in range(self.num_blocks):
        cout = self.model_channels * mult
        x = block(f"enc_{res}x{res}_block{idx}", cout,
                  attention=res in self.attn_resolutions)(x, emb, train=train)
        skips.append(x)

    # Decoder. Every `blockN` concatenates [x, skip]; `in` and `up` blocks never do.
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      res = self.img_resolution >> level
      if level == len(self.channel_mult) - 1:
        x = block(f"dec_{res}x{res}_in0", cout, attention=True)(x, emb, train=train)
        x = block(f"dec_{res}x{res}_in1", cout)(x, emb, train=train)
      else:
        x = block(f"dec_{res}x{res}_up", cout, up=True)(x, emb, train=train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
        cout = self.model_channels * mult
        attn = idx == self.num_blocks and res in self.attn_resolutions
        x = block(f"dec_{res}x{res}_block{idx}", cout, attention=attn)(x, emb, train=train)
    res = self.img_resolution
    x = group_norm(cout, f"dec_{res}x{res}_aux_norm", self.dtype)(x)
    return Conv2d(self.out_channels, 3, kernel_init=init_zero, dtype=self.dtype,
                  name=f"dec_{res}x{res}_aux_conv")(nn.silu(x))


def count_params(tree) -> int:
  """Number of scalars in a (possibly abstract, `jax.eval_shape`) parameter tree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
