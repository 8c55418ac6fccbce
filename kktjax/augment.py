"""EDM's geometric augmentation pipe (AugmentPipe) with EDM's CIFAR-10 settings, in JAX.

The pipe is applied to the clean CIFAR-10 images before a victim is trained (SPEC §5). Each image
gets its own transforms, drawn from its own key:

  1. x-flip and y-flip as exact pixel flips;
  2. a geometric warp by G⁻¹ = S(1/s)·R(w)·[R(−r)·S(1/s_a, s_a)·R(r)]·T(−shift) in centred
     pixel coordinates: reflect-pad, ×2 upsampling with the 12-tap sym6 low-pass, bilinear
     resampling with zero padding (`affine_grid` + `grid_sample`, align_corners=False), ×2
     downsampling with sym6 and a 3 px crop.

The warp runs for every image, including those whose transforms are all gated off; sym6 is
orthogonal, so those come back unchanged to float32 round-off. Unlike EDM, which pads by a margin
that depends on the whole batch, the warp always reflect-pads by the cap (W−1, H−1), which gives a
static shape for `jit`/`vmap`; `edm_margin` computes EDM's margin on the host so that the two can
be compared (tests/kktjax/augment_test.py).

Conventions: images are HWC (batches NHWC) with values in [0, 1] (or uint8); the pipe runs in
EDM's [−1, 1] scaling (2x − 1) and maps back; the output is not clipped. The 9 labels are, in
order, [xflip, yflip, scale, cos−1, sin, aniso·cos, aniso·sin, tx, ty] (EDM's label order for
these settings; a transform whose multiplier is 0 keeps its slots, filled with zeros).

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", 2022;
  NVlabs/edm@62072d2, training/augment.py.
  Karras et al., "Training Generative Adversarial Networks with Limited Data", 2020.
"""

import collections.abc
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Low-pass decomposition filter of the `sym6` wavelet (EDM's `wavelets["sym6"]`).
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
])
HZ_PAD = len(SYM6) // 4  # 3: the output grid extends this many pixels beyond each side.

NUM_LABELS = 9
LABEL_NAMES = ("xflip", "yflip", "scale", "rotate_cos_minus_1", "rotate_sin", "aniso_cos",
               "aniso_sin", "translate_x", "translate_y")

_HIGHEST = jax.lax.Precision.HIGHEST  # No TF32 on GPUs: the matrices set sample positions.


class AugmentConfig(NamedTuple):
  """Probability multipliers and ranges of AugmentPipe; defaults are EDM's CIFAR-10 settings.

  A transform is applied to an image when rand < multiplier·p. The fields are plain floats, so
  the config is a pytree whose leaves become traced scalars under `jit` (no recompilation).
  """
  p: float = 0.12  # Overall multiplier for the augmentation probability.
  xflip: float = 1e8  # Multiplier for x-flip (1e8·0.12 ≥ 1: always gated on).
  yflip: float = 1.0  # Multiplier for y-flip.
  scale: float = 1.0  # Multiplier for isotropic scaling.
  rotate_frac: float = 1.0  # Multiplier for fractional rotation.
  aniso: float = 1.0  # Multiplier for anisotropic scaling.
  translate_frac: float = 1.0  # Multiplier for fractional translation.
  scale_std: float = 0.2  # log2 standard deviation of isotropic scaling.
  rotate_frac_max: float = 1.0  # Range of fractional rotation, 1 = full circle.
  aniso_std: float = 0.2  # log2 standard deviation of anisotropic scaling.
  aniso_rotate_prob: float = 0.5  # Probability of a rotated frame for anisotropic scaling.
  translate_frac_std: float = 0.125  # Std of fractional translation, relative to image size.


class AugmentParams(NamedTuple):
  """Per-image transform parameters (EDM's `w` values); gated-off transforms hold 0 (identity).

  Attributes:
    xflip: int32 in {0, 1}.
    yflip: int32 in {0, 1}.
    scale: float32 w; isotropic scale s = 2^(scale_std·w).
    rotate: float32 rotation angle w in radians.
    aniso: float32 w; anisotropic scale s_a = 2^(aniso_std·w).
    aniso_angle: float32 frame angle r of the anisotropic scaling.
    translate: float32 [2] (w0, w1); shift = translate_frac_std·(W·w0, H·w1) pixels.
  """
  xflip: jax.Array
  yflip: jax.Array
  scale: jax.Array
  rotate: jax.Array
  aniso: jax.Array
  aniso_angle: jax.Array
  translate: jax.Array


def identity_params(batch_shape: tuple[int, ...] = ()) -> AugmentParams:
  """Parameters of the identity augmentation (every transform gated off)."""
  zi = jnp.zeros(batch_shape, jnp.int32)
  zf = jnp.zeros(batch_shape, jnp.float32)
  return AugmentParams(xflip=zi, yflip=zi, scale=zf, rotate=zf, aniso=zf, aniso_angle=zf,
                       translate=jnp.zeros(batch_shape + (2,), jnp.float32))


def as_config(config: Any) -> AugmentConfig:
  """Returns `config` as an AugmentConfig; accepts an AugmentConfig, dict or ConfigDict."""
  if isinstance(config, AugmentConfig):
    return config
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, collections.abc.Mapping):
    raise ValueError(f"augment config must be an AugmentConfig or a mapping, got {type(config)}")
  unknown = sorted(set(config) - set(AugmentConfig._fields))
  if unknown:
    raise ValueError(f"unknown augment config fields: {unknown}")
  return AugmentConfig(**config)


def _check_config(config: AugmentConfig) -> None:
  for name, value in config._asdict().items():
    if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
      raise ValueError(f"augment config field {name} must be finite and >= 0, got {value}")


# --------------------------------------------------------------------------------------------
# Parameters and labels.
# --------------------------------------------------------------------------------------------


def sample_params(key: jax.Array, config: AugmentConfig = AugmentConfig()) -> AugmentParams:
  """Draws one image's transform parameters, each transform behind its own gate.

  Args:
    key: a PRNG key for this image.
    config: probability multipliers and ranges.

  Returns:
    AugmentParams of scalars (translate: [2]). A gated-off transform has its identity parameter
    0. The anisotropic frame angle r is also 0 when the anisotropic scaling is gated off (EDM
    leaves it random there, which changes nothing but round-off: R(−r)·I·R(r) = I).

  References:
    EDM training/augment.py, AugmentPipe.__call__ (parameter selection).
  """
  f32 = jnp.float32
  c = jax.tree_util.tree_map(lambda v: jnp.asarray(v, f32), config)
  key_u, key_n = jax.random.split(key)
  u = jax.random.uniform(key_u, (11,), f32)  # One vector of draws keeps the graph small.
  n = jax.random.normal(key_n, (4,), f32)

  def symmetric(v, half_range):
    return (v * 2 - 1) * half_range

  xflip = jnp.where(u[1] < c.xflip * c.p, (u[0] < 0.5).astype(jnp.int32), 0)
  yflip = jnp.where(u[3] < c.yflip * c.p, (u[2] < 0.5).astype(jnp.int32), 0)
  scale = jnp.where(u[4] < c.scale * c.p, n[0], 0.0)
  rotate = jnp.where(u[5] < c.rotate_frac * c.p, symmetric(u[6], jnp.pi * c.rotate_frac_max), 0.0)
  aniso_on = u[7] < c.aniso * c.p
  aniso = jnp.where(aniso_on, n[1], 0.0)
  rotated_frame = aniso_on & (u[8] < c.aniso_rotate_prob)
  aniso_angle = jnp.where(rotated_frame, symmetric(u[9], jnp.pi), 0.0)
  translate = jnp.where(u[10] < c.translate_frac * c.p, n[2:4], 0.0)
  return AugmentParams(xflip=xflip, yflip=yflip, scale=scale, rotate=rotate, aniso=aniso,
                       aniso_angle=aniso_angle, translate=translate)


def augment_labels(params: AugmentParams) -> jax.Array:
  """EDM's augment labels: float32 [..., 9] in the order of LABEL_NAMES.

  [xflip, yflip, scale, cos(rot)−1, sin(rot), aniso·cos r, aniso·sin r, tx, ty]; all zero for
  the identity parameters.
  """
  f32 = jnp.float32
  rot = jnp.asarray(params.rotate, f32)
  aniso = jnp.asarray(params.aniso, f32)
  r = jnp.asarray(params.aniso_angle, f32)
  t = jnp.asarray(params.translate, f32)
  return jnp.stack([
      jnp.asarray(params.xflip, f32), jnp.asarray(params.yflip, f32),
      jnp.asarray(params.scale, f32), jnp.cos(rot) - 1, jnp.sin(rot),
      aniso * jnp.cos(r), aniso * jnp.sin(r), t[..., 0], t[..., 1]], axis=-1)


# --------------------------------------------------------------------------------------------
# Transformation matrices (3x3 homogeneous, acting on centred (x, y) pixel coordinates).
# --------------------------------------------------------------------------------------------


def _matrix(rows) -> jax.Array:
  """Stacks a nested list of broadcastable scalars into [..., 3, 3] float32."""
  entries = [jnp.asarray(e, jnp.float32) for row in rows for e in row]
  shape = jnp.broadcast_shapes(*(e.shape for e in entries))
  entries = [jnp.broadcast_to(e, shape) for e in entries]
  return jnp.stack(entries, axis=-1).reshape(shape + (3, 3))


def _translate(tx, ty) -> jax.Array:
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale(sx, sy) -> jax.Array:
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate(theta) -> jax.Array:
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _matmul(*ms: jax.Array) -> jax.Array:
  out = ms[0]
  for m in ms[1:]:
    out = jnp.einsum("...ij,...jk->...ik", out, m, precision=_HIGHEST)
  return out


def transform_matrix(params: AugmentParams, height: int, width: int,
                     config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """EDM's inverse map G⁻¹ (output → input) in centred pixel coordinates, float32 [..., 3, 3].

  G⁻¹ = S(1/s)·R(w)·R(−r)·S(1/s_a, s_a)·R(r)·T(−tx, −ty), with R(θ) = [[cos, −sin], [sin, cos]].
  The flips are not part of it (they are pixel flips applied first).
  """
  c = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), config)
  s = jnp.exp2(jnp.asarray(params.scale, jnp.float32) * c.scale_std)
  s_a = jnp.exp2(jnp.asarray(params.aniso, jnp.float32) * c.aniso_std)
  r = jnp.asarray(params.aniso_angle, jnp.float32)
  t = jnp.asarray(params.translate, jnp.float32)
  tx = t[..., 0] * (width * c.translate_frac_std)
  ty = t[..., 1] * (height * c.translate_frac_std)
  return _matmul(_scale(1 / s, 1 / s), _rotate(params.rotate), _rotate(-r),
                 _scale(1 / s_a, s_a), _rotate(r), _translate(-tx, -ty))


def cap_margin(height: int, width: int) -> tuple[int, int, int, int]:
  """The static padding (left, top, right, bottom) = (W−1, H−1, W−1, H−1): EDM's clamp."""
  return (width - 1, height - 1, width - 1, height - 1)


def edm_margin(g_inv: Any, height: int, width: int) -> tuple[int, int, int, int]:
  """EDM's data-dependent padding (left, top, right, bottom) for a batch, on the host.

  The largest extent of the transformed image corners over the whole batch plus 2·Hz_pad,
  relative to the centre, clamped to [0, W−1] / [0, H−1] and rounded up (float32 as in EDM).

  Args:
    g_inv: [3, 3] or [N, 3, 3] inverse maps from `transform_matrix` (concrete values).
    height: image height H.
    width: image width W.

  Returns:
    Python ints (mx0, my0, mx1, my1).
  """
  g = np.asarray(g_inv, np.float32).reshape(-1, 3, 3)
  cx, cy = (width - 1) / 2, (height - 1) / 2
  corners = np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], np.float32).T
  xy = np.matmul(g, corners)[:, :2, :].transpose(1, 0, 2).reshape(2, -1)  # [xy, batch·corner]
  margin = np.concatenate([-xy, xy]).max(axis=1)  # [x0, y0, x1, y1]
  margin = margin + np.array([2 * HZ_PAD - cx, 2 * HZ_PAD - cy] * 2, np.float32)
  margin = np.minimum(np.maximum(margin, 0), np.array([width - 1, height - 1] * 2, np.float32))
  return tuple(int(m) for m in np.ceil(margin))


# --------------------------------------------------------------------------------------------
# The warp (one image, channels first [C, H, W], values in [−1, 1]).
# --------------------------------------------------------------------------------------------


def _conv_1d(x: jax.Array, taps: np.ndarray, axis: int, *, padding: int, stride: int = 1,
             dilation: int = 1) -> jax.Array:
  """Cross-correlates every channel of x [C, H, W] with `taps` along spatial `axis` (1 or 2).

  `dilation` zero-stuffs the input (EDM's stack-with-zeros upsampling); `padding` zeros are
  added on both sides after that, as in torch's conv2d.
  """
  k = len(taps)
  kernel = jnp.asarray(taps, jnp.float32).reshape((k, 1, 1, 1) if axis == 1 else (1, k, 1, 1))
  pad = ((padding, padding), (0, 0)) if axis == 1 else ((0, 0), (padding, padding))
  strides = (stride, 1) if axis == 1 else (1, stride)
  lhs_dilation = (dilation, 1) if axis == 1 else (1, dilation)
  out = jax.lax.conv_general_dilated(
      x[..., None], kernel, window_strides=strides, padding=pad, lhs_dilation=lhs_dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
  return out[..., 0]


def _upsample2x(x: jax.Array) -> jax.Array:
  """[C, H, W] -> [C, 2H, 2W]: zero-stuff, then convolve with sym6 (torch pad (len+1)//2)."""
  pad = (len(SYM6) + 1) // 2
  x = _conv_1d(x, SYM6[::-1], axis=2, padding=pad, dilation=2)
  return _conv_1d(x, SYM6[::-1], axis=1, padding=pad, dilation=2)


def _downsample2x(x: jax.Array) -> jax.Array:
  """[C, 2(H+6), 2(W+6)] -> [C, H, W]: sym6 with stride 2 (pad (len−1)//2), crop Hz_pad."""
  pad = (len(SYM6) - 1) // 2
  x = _conv_1d(x, SYM6, axis=2, padding=pad, stride=2)[:, :, HZ_PAD:-HZ_PAD]
  return _conv_1d(x, SYM6, axis=1, padding=pad, stride=2)[:, HZ_PAD:-HZ_PAD, :]


def _bilinear_zeros(x: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  """Bilinear samples of x [C, H, W] at pixel coordinates (row, col); taps outside read 0.

  The same as grid_sample(mode="bilinear", padding_mode="zeros") once its normalised
  coordinates are unnormalised.
  """
  _, h, w = x.shape
  r0, c0 = jnp.floor(row), jnp.floor(col)
  fr, fc = row - r0, col - c0
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  out = jnp.zeros((x.shape[0],) + row.shape, x.dtype)
  for dr, wr in ((0, 1 - fr), (1, fr)):
    for dc, wc in ((0, 1 - fc), (1, fc)):
      ri, ci = r0 + dr, c0 + dc
      valid = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
      tap = x[:, jnp.clip(ri, 0, h - 1), jnp.clip(ci, 0, w - 1)]
      out = out + jnp.where(valid, wr * wc, 0.0) * tap
  return out


def _warp(x: jax.Array, g_inv: jax.Array, margin: tuple[int, int, int, int]) -> jax.Array:
  """EDM's geometric warp of one image x [C, H, W] by the inverse map g_inv [3, 3]."""
  _, h, w = x.shape
  mx0, my0, mx1, my1 = margin
  x = jnp.pad(x, ((0, 0), (my0, my1), (mx0, mx1)), mode="reflect")
  g = _matmul(_translate((mx0 - mx1) / 2, (my0 - my1) / 2), g_inv)

  # ×2 upsampling; conjugate G⁻¹ by the ×2 scale and by the half-pixel offset of the new grid
  # (EDM places original pixel i at upsampled pixel 2i).
  x = _upsample2x(x)
  g = _matmul(_translate(-0.5, -0.5), _scale(2, 2), g, _scale(0.5, 0.5), _translate(0.5, 0.5))

  # Resample onto the (H+6)·2 × (W+6)·2 output grid. affine_grid + grid_sample with
  # align_corners=False map centred output coordinates to centred input coordinates.
  _, hi, wi = x.shape
  ho, wo = (h + 2 * HZ_PAD) * 2, (w + 2 * HZ_PAD) * 2
  xs = jnp.arange(wo, dtype=jnp.float32)[None, :] - (wo - 1) / 2
  ys = jnp.arange(ho, dtype=jnp.float32)[:, None] - (ho - 1) / 2
  col = g[0, 0] * xs + g[0, 1] * ys + g[0, 2] + (wi - 1) / 2
  row = g[1, 0] * xs + g[1, 1] * ys + g[1, 2] + (hi - 1) / 2
  x = _bilinear_zeros(x, row, col)
  return _downsample2x(x)


def apply_params(image: jax.Array, params: AugmentParams, config: AugmentConfig = AugmentConfig(),
                 margin: tuple[int, int, int, int] | None = None) -> jax.Array:
  """Applies given transform parameters to one image.

  Args:
    image: float [H, W, C] in [0, 1].
    params: one image's AugmentParams (scalars; translate [2]).
    config: the ranges (scale_std, aniso_std, translate_frac_std) that turn w into transforms.
    margin: static (left, top, right, bottom) reflect padding; None pads by the cap
      (W−1, H−1, W−1, H−1). EDM's data-dependent margin is `edm_margin`.

  Returns:
    float32 [H, W, C] in the [0, 1] scaling, not clipped.
  """
  h, w, _ = image.shape
  if margin is None:
    margin = cap_margin(h, w)
  x = jnp.transpose(2 * jnp.asarray(image, jnp.float32) - 1, (2, 0, 1))  # EDM's [−1, 1].
  x = jnp.where(params.xflip == 1, x[:, :, ::-1], x)
  x = jnp.where(params.yflip == 1, x[:, ::-1, :], x)
  x = _warp(x, transform_matrix(params, h, w, config), margin)
  return jnp.transpose((x + 1) / 2, (1, 2, 0))


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------


def _as_float_images(images: Any, ndim: int) -> jax.Array:
  """Validates [.., H, W, C] uint8 or float images and returns float32 in [0, 1]."""
  if not hasattr(images, "dtype"):
    images = np.asarray(images)
  shape, dtype = images.shape, images.dtype
  if len(shape) != ndim:
    layout = "NHWC" if ndim == 4 else "HWC"
    raise ValueError(f"augment expects {ndim}-d images ({layout}), got shape {shape}")
  if shape[-3] < 2 or shape[-2] < 2:
    raise ValueError(f"augment needs H, W >= 2 for reflect padding, got shape {shape}")
  if dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"augment expects uint8 or float images, got dtype {dtype}")
  return jnp.asarray(images, jnp.float32)


def _augment_one(key: jax.Array, image: jax.Array, config: AugmentConfig):
  params = sample_params(key, config)
  return apply_params(image, params, config), augment_labels(params)


_augment_one_jit = jax.jit(_augment_one)
_augment_batch_jit = jax.jit(jax.vmap(_augment_one, in_axes=(0, 0, None)))


def augment(key: jax.Array, image: Any, config: Any = AugmentConfig()):
  """Augments one image with EDM's AugmentPipe.

  Args:
    key: PRNG key for this image.
    image: [H, W, C] uint8, or float in [0, 1].
    config: AugmentConfig (or dict / ConfigDict with its fields).

  Returns:
    (augmented float32 [H, W, C] in the [0, 1] scaling, not clipped; labels float32 [9]).
  """
  config = as_config(config)
  _check_config(config)
  return _augment_one_jit(key, _as_float_images(image, 3), config)


def _is_single_key(key: Any) -> bool:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key.ndim == 0
  return key.ndim == 1


def augment_batch(key: jax.Array, images: Any, config: Any = AugmentConfig()):
  """Augments a batch, each image with its own key and transforms.

  Args:
    key: one PRNG key, split with `jax.random.split(key, N)` into per-image keys, or N keys.
    images: [N, H, W, C] uint8, or float in [0, 1].
    config: AugmentConfig (or dict / ConfigDict with its fields).

  Returns:
    (augmented float32 [N, H, W, C] in the [0, 1] scaling, not clipped; labels float32 [N, 9]).
    Image i equals `augment(keys[i], images[i], config)`.
  """
  config = as_config(config)
  _check_config(config)
  images = _as_float_images(images, 4)
  n = images.shape[0]
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if _is_single_key(key):
    keys = jax.random.split(key, n)
  else:
    keys = key
    if keys.shape[0] != n:
      raise ValueError(f"augment_batch got {keys.shape[0]} keys for {n} images")
  return _augment_batch_jit(keys, images, config)
