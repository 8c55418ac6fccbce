"""Image metrics and distances used by kktjax: SSIM, PSNR, NCC distance, HaarPSI, bicubic ×1/2.

Conventions: images are HWC float arrays, [..., H, W, C], with values in [0, 1] unless a function
says otherwise. Every function is pure and jit-able; options that change shapes or code paths
(variant, subsample, chunk sizes, axes) are static Python arguments, validated in Python before
entering JAX so bad input gives a one-line ValueError.

References:
  Wang et al., "Image quality assessment: from error visibility to structural similarity", 2004.
  Haim et al., "Reconstructing training data from trained neural networks", NeurIPS 2022
    (nivha/dataset_reconstruction: NCC distance, 3x3 kornia SSIM, bicubic pre-match).
  Reisenhofer et al., "A Haar wavelet-based perceptual similarity index for image quality
    assessment", 2018 (rgcda/haarpsi).
"""

import functools
from typing import Callable, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_VARIANTS = ("haim", "wang")

# SSIM constants shared by both variants (Wang et al.; kornia and dm-pix defaults).
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_SIGMA = 1.5

# HaarPSI constants (Reisenhofer et al. 2018, tuned values for natural images).
HAARPSI_C = 30.0
HAARPSI_ALPHA = 4.2
_HAARPSI_SCALES = 3


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian taps, centred like dm-pix and kornia (odd sizes)."""
  k = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  taps = np.exp(-0.5 * (k / sigma) ** 2)
  return taps / taps.sum()


# [0.307801, 0.384397, 0.307801]: kornia's get_gaussian_kernel2d((3, 3), (1.5, 1.5)) factors.
HAIM_SSIM_TAPS = _gaussian_taps(3, _SSIM_SIGMA)
_WANG_SSIM_TAPS = _gaussian_taps(11, _SSIM_SIGMA)


def _correlate_axis(x: jax.Array, taps: Sequence[float], axis: int) -> jax.Array:
  """'valid' correlation of x with 1-D taps along axis, as a sum of shifted slices (exact)."""
  axis = axis % x.ndim
  n_out = x.shape[axis] - len(taps) + 1
  out = None
  for k, t in enumerate(taps):
    term = float(t) * jax.lax.slice_in_dim(x, k, k + n_out, axis=axis)
    out = term if out is None else out + term
  return out


def _haim_filter(z: jax.Array) -> jax.Array:
  """Kornia-style SSIM window: reflect-pad 1 px, then separable 3-tap Gaussian (HWC)."""
  pad = [(0, 0)] * (z.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
  z = jnp.pad(z, pad, mode="reflect")
  return _correlate_axis(_correlate_axis(z, HAIM_SSIM_TAPS, -3), HAIM_SSIM_TAPS, -2)


def _wang_filter(z: jax.Array) -> jax.Array:
  """dm-pix default SSIM window: separable 11-tap Gaussian, 'valid' borders (HWC)."""
  return _correlate_axis(_correlate_axis(z, _WANG_SSIM_TAPS, -3), _WANG_SSIM_TAPS, -2)


def _ssim_filter_fn(variant: str) -> Callable[[jax.Array], jax.Array]:
  if variant == "haim":
    return _haim_filter
  if variant == "wang":
    return _wang_filter
  raise ValueError(f"Unknown SSIM variant {variant!r}; valid variants: {SSIM_VARIANTS}.")


def _check_images(name: str, x, min_ndim: int = 3) -> None:
  if np.ndim(x) < min_ndim:
    raise ValueError(f"{name} must be an image array [..., H, W, C]; got shape {np.shape(x)}.")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{name} must be float images in [0, 1]; got dtype {jnp.result_type(x)}.")


def _check_ssim_inputs(variant: str, shape_hw: tuple[int, int]) -> None:
  _ssim_filter_fn(variant)  # Validates the variant name.
  if variant == "wang" and min(shape_hw) < 11:
    raise ValueError(f"SSIM variant 'wang' needs H, W >= 11 (11x11 window); got {shape_hw}.")
  if variant == "haim" and min(shape_hw) < 2:
    raise ValueError(f"SSIM variant 'haim' needs H, W >= 2 (reflect padding); got {shape_hw}.")


def ssim(a: jax.Array, b: jax.Array, variant: str = "haim") -> jax.Array:
  """SSIM between image pairs, averaged over H, W and C.

  Variant "haim" (default) equals Haim et al.'s `kornia.metrics.ssim(..., window_size=3)`: a 3x3
  Gaussian window (sigma 1.5) over reflect-padded images, so the map is full size. Variant
  "wang" is `dm_pix.ssim` with its defaults (11x11 Gaussian, 'valid' borders). Both use
  C1 = 0.01^2, C2 = 0.03^2, max_val = 1 and population statistics. Scores from different
  variants are not comparable.

  Args:
    a: images [..., H, W, C] in [0, 1].
    b: images with the same shape as a.
    variant: "haim" or "wang".

  Returns:
    SSIM per image pair, shape [...].
  """
  _check_images("a", a)
  _check_images("b", b)
  if np.shape(a) != np.shape(b):
    raise ValueError(f"ssim needs equal shapes; got {np.shape(a)} and {np.shape(b)}.")
  _check_ssim_inputs(variant, np.shape(a)[-3:-1])
  return _ssim(jnp.asarray(a), jnp.asarray(b), variant)


@functools.partial(jax.jit, static_argnums=2)
def _ssim(a, b, variant):
  batch_shape = a.shape[:-3]
  # dm-pix accepts rank 3 or 4 only; fold all batch axes into one.
  a4 = a.reshape((-1,) + a.shape[-3:])
  b4 = b.reshape((-1,) + b.shape[-3:])
  if variant == "haim":
    out = dm_pix.ssim(a4, b4, max_val=1.0, k1=_SSIM_K1, k2=_SSIM_K2, filter_fn=_haim_filter)
  else:
    out = dm_pix.ssim(a4, b4, max_val=1.0, filter_size=11, filter_sigma=_SSIM_SIGMA,
                      k1=_SSIM_K1, k2=_SSIM_K2)
  return out.reshape(batch_shape)


def _ssim_from_stats(mu0, mu1, e00, e11, e01):
  """SSIM map from filtered moments, with dm-pix's clipping of (co)variances."""
  mu00 = mu0 * mu0
  mu11 = mu1 * mu1
  mu01 = mu0 * mu1
  eps = jnp.finfo(jnp.float32).eps ** 2
  sigma00 = jnp.maximum(eps, e00 - mu00)
  sigma11 = jnp.maximum(eps, e11 - mu11)
  sigma01 = e01 - mu01
  sigma01 = jnp.sign(sigma01) * jnp.minimum(jnp.sqrt(sigma00 * sigma11), jnp.abs(sigma01))
  c1 = _SSIM_K1 ** 2
  c2 = _SSIM_K2 ** 2
  numer = (2 * mu01 + c1) * (2 * sigma01 + c2)
  denom = (mu00 + mu11 + c1) * (sigma00 + sigma11 + c2)
  return numer / denom


def ssim_matrix(a: jax.Array, b: jax.Array, variant: str = "haim",
                chunk_size: int = 16) -> jax.Array:
  """SSIM of every pair (a[i], b[j]); equals `ssim(a[i], b[j], variant)`.

  Per-image filtered moments (mean, mean of squares) are computed once; only the cross term is
  filtered per pair. Rows of a are processed `chunk_size` at a time with `lax.map`, so peak
  memory is about 4 * chunk_size * T * H * W * C floats, independent of M.

  Args:
    a: images [M, H, W, C] in [0, 1].
    b: images [T, H, W, C] in [0, 1].
    variant: "haim" or "wang" (see `ssim`).
    chunk_size: rows of a scored at once (static).

  Returns:
    [M, T] SSIM scores.
  """
  _check_images("a", a)
  _check_images("b", b)
  if np.ndim(a) != 4 or np.ndim(b) != 4 or np.shape(a)[1:] != np.shape(b)[1:]:
    raise ValueError(f"ssim_matrix needs a [M,H,W,C] and b [T,H,W,C] with equal H, W, C; got "
                     f"{np.shape(a)} and {np.shape(b)}.")
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")
  _check_ssim_inputs(variant, np.shape(a)[1:3])
  return _ssim_matrix(jnp.asarray(a), jnp.asarray(b), variant, int(chunk_size))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _ssim_matrix(a, b, variant, chunk_size):
  filt = _ssim_filter_fn(variant)
  mu_b = filt(b)
  e_bb = filt(b * b)

  def row(a_i):
    mu_a = filt(a_i)
    e_aa = filt(a_i * a_i)
    e_ab = filt(a_i[None] * b)
    ssim_map = _ssim_from_stats(mu_a[None], mu_b, e_aa[None], e_bb, e_ab)
    return jnp.mean(ssim_map, axis=(-3, -2, -1))

  return jax.lax.map(row, a, batch_size=min(chunk_size, a.shape[0]))


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image pair, [..., H, W, C] -> [...]."""
  _check_images("a", a)
  _check_images("b", b)
  if np.shape(a) != np.shape(b):
    raise ValueError(f"psnr needs equal shapes; got {np.shape(a)} and {np.shape(b)}.")
  mse = jnp.mean(jnp.square(jnp.asarray(a) - jnp.asarray(b)), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(max_val ** 2 / mse)


# ---------------------------------------------------------------------------------------------
# NCC distance (Haim et al.)
# ---------------------------------------------------------------------------------------------


def ncc_standardise(x: jax.Array, channels: int = 3) -> jax.Array:
  """Standardises each channel of each flattened image by its mean and unbiased std.

  Args:
    x: [..., D] with D = channels * P flattened in C, H, W order (channel-major).
    channels: number of channels C.

  Returns:
    [..., D] standardised vectors; a constant channel maps to zeros (it then counts as
    correlation 0 in `ncc_distance_matrix`, where Haim's code would give NaN).
  """
  d = x.shape[-1]
  xs = x.reshape(x.shape[:-1] + (channels, d // channels))
  mean = jnp.mean(xs, axis=-1, keepdims=True)
  std = jnp.std(xs, axis=-1, keepdims=True, ddof=1)
  safe_std = jnp.where(std > 0, std, 1.0)
  z = jnp.where(std > 0, (xs - mean) / safe_std, 0.0)
  return z.reshape(x.shape)


def ncc_distance_matrix(a: jax.Array, b: jax.Array, channels: int = 3) -> jax.Array:
  """Haim's NCC distance between every pair of flattened images.

  d(a, b) = sum over all entries of (a_hat - b_hat)^2 with per-channel standardisation (unbiased
  std), which equals 2 (P - 1) sum_c (1 - rho_c) for P pixels per channel. The range is
  [0, 4 C (P - 1)], i.e. [0, 12276] for 3x32x32. Computed as |a|^2 + |b|^2 - 2 a.b with one
  full-precision matmul, so memory is O((M + T) D + M T).

  Args:
    a: [M, D] mean-subtracted images flattened in C, H, W order.
    b: [T, D] likewise.
    channels: number of channels C (D must be divisible by it).

  Returns:
    [M, T] distances, clipped at 0 against rounding.

  References:
    Haim et al. 2022, `evaluations.ncc_dist` (without `div_dim`).
  """
  if np.ndim(a) != 2 or np.ndim(b) != 2 or np.shape(a)[1] != np.shape(b)[1]:
    raise ValueError(f"ncc_distance_matrix needs a [M, D] and b [T, D]; got {np.shape(a)} and "
                     f"{np.shape(b)}.")
  if channels < 1 or np.shape(a)[1] % channels or np.shape(a)[1] // channels < 2:
    raise ValueError(f"D={np.shape(a)[1]} must be channels={channels} times >= 2 pixels.")
  return _ncc_distance_matrix(jnp.asarray(a), jnp.asarray(b), channels)


@functools.partial(jax.jit, static_argnums=2)
def _ncc_distance_matrix(a, b, channels):
  za = ncc_standardise(a, channels)
  zb = ncc_standardise(b, channels)
  aa = jnp.sum(za * za, axis=-1)
  bb = jnp.sum(zb * zb, axis=-1)
  # HIGHEST: GPUs otherwise use TF32 for float32 matmuls, too coarse near d = 0.
  ab = jnp.matmul(za, zb.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(aa[:, None] + bb[None, :] - 2.0 * ab, 0.0)


# ---------------------------------------------------------------------------------------------
# PyTorch-semantics bicubic x1/2 (Haim's pre-match downsampling)
# ---------------------------------------------------------------------------------------------


def pytorch_bicubic_downsample2(x: jax.Array, axes: tuple[int, int] = (-3, -2)) -> jax.Array:
  """Halves two spatial axes like `torch.nn.functional.interpolate(scale_factor=1/2,
  mode='bicubic')`: Keys a = -0.75, align_corners=False, no antialias, clamped edges.

  For an even size this is a fixed 4-tap filter: output o draws on inputs 2o-1 .. 2o+2 (clamped)
  with weights [-0.09375, 0.59375, 0.59375, -0.09375]. `jax.image.resize(method="cubic")`
  differs (a = -0.5, antialiasing).

  Args:
    x: array with two even-sized spatial axes; by default HWC images [..., H, W, C].
    axes: the two spatial axes, e.g. (-2, -1) for [..., H, W] or CHW arrays.

  Returns:
    x with both spatial axes halved.
  """
  nd = np.ndim(x)
  try:
    ax = tuple(sorted({int(a) % nd for a in axes}))
  except (TypeError, ZeroDivisionError):
    raise ValueError(f"axes must be two axes of x; got axes={axes} for shape {np.shape(x)}.")
  if len(ax) != 2 or any(not -nd <= int(a) < nd for a in axes):
    raise ValueError(f"axes must be two distinct axes of x; got {axes} for shape {np.shape(x)}.")
  shape = list(np.shape(x))
  if any(shape[a] % 2 or shape[a] < 2 for a in ax):
    raise ValueError(f"pytorch_bicubic_downsample2 needs even spatial sizes; got shape "
                     f"{tuple(shape)} with axes {axes}.")
  for a in ax:
    shape[a] //= 2
  x = jnp.asarray(x)
  return jax.image.resize(x, tuple(shape), method=jax.image.ResizeMethod.CUBIC_PYTORCH,
                          antialias=False)


# ---------------------------------------------------------------------------------------------
# HaarPSI (Reisenhofer et al. 2018; rgcda/haarpsi)
# ---------------------------------------------------------------------------------------------


def _correlate_same(x: jax.Array, taps: Sequence[float], axis: int) -> jax.Array:
  """'same' correlation along axis with zero padding K/2 - 1 before and K/2 after (even K).

  This is the alignment of scipy's `convolve2d(..., mode="same")` used by the authors' code
  for the even-sized Haar and 2x2 mean filters (up to a sign we remove with abs()).
  """
  k = len(taps)
  pad = [(0, 0)] * x.ndim
  pad[axis % x.ndim] = (k // 2 - 1, k // 2)
  return _correlate_axis(jnp.pad(x, pad), taps, axis)


def _mean2x2(x: jax.Array) -> jax.Array:
  """2x2 mean filter ('same', 0 before and 1 after) over the last two axes."""
  return _correlate_same(_correlate_same(x, (0.5, 0.5), -2), (0.5, 0.5), -1)


def _haar(x: jax.Array, scale: int, orientation: int) -> jax.Array:
  """|h_scale^orientation * x| over the last two axes [..., H, W].

  h_j = 2^-j ones(2^j, 2^j) with its first 2^(j-1) rows negated (orientation 0, a vertical
  difference) or its transpose (orientation 1); the filter is separable into a signed step and
  a box, each scaled by 2^(-j/2).
  """
  n = 2 ** scale
  step = [-1.0] * (n // 2) + [1.0] * (n // 2)
  box = [1.0] * n
  diff_axis, box_axis = (-2, -1) if orientation == 0 else (-1, -2)
  y = _correlate_same(x, step, diff_axis)
  y = _correlate_same(y, box, box_axis)
  return jnp.abs(y * 2.0 ** (-scale))


def _similarity(a, b, c):
  return (2.0 * a * b + c) / (a * a + b * b + c)


def _check_haarpsi_shape(shape, subsample) -> None:
  channels = shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"haarpsi needs C = 1 (grey) or C = 3 (RGB); got C = {channels}.")
  h, w = shape[-3:-1]
  min_size = 2 * 2 ** _HAARPSI_SCALES if subsample else 2 ** _HAARPSI_SCALES
  if min(h, w) < min_size:
    raise ValueError(f"haarpsi needs H, W >= {min_size}; got {(h, w)}.")


def haarpsi(a: jax.Array, b: jax.Array, subsample: bool = True) -> jax.Array:
  """HaarPSI between image pairs; colour (C = 3) or grey (C = 1) HWC images in [0, 1].

  Values are scaled by 255; colour images are converted to YIQ (luminance Y scored with Haar
  wavelets at scales 1, 2, chroma I, Q with a 2x2 mean), grey images use Y only (two orientation
  maps, no chroma term). With `subsample`, Y, I, Q are 2x2-mean filtered and every second pixel
  kept first (the reference default). C = 30, alpha = 4.2. Range (0, 1]; two constant images give
  NaN (all weights are 0), as in the reference code.

  Args:
    a: reference images [..., H, W, C], C in {1, 3}, values in [0, 1].
    b: distorted images with the same shape.
    subsample: apply the reference's 2x2 subsampling (report which setting was used).

  Returns:
    HaarPSI per pair, shape [...].

  References:
    Reisenhofer, Bosse, Kutyniok, Wiegand, "A Haar wavelet-based perceptual similarity index for
    image quality assessment", Signal Processing: Image Communication 61, 2018.
  """
  _check_images("a", a)
  _check_images("b", b)
  if np.shape(a) != np.shape(b):
    raise ValueError(f"haarpsi needs equal shapes; got {np.shape(a)} and {np.shape(b)}.")
  _check_haarpsi_shape(np.shape(a), subsample)
  return _haarpsi(jnp.asarray(a), jnp.asarray(b), bool(subsample))


def _yiq_planes(x: jax.Array) -> tuple[jax.Array, ...]:
  """[..., H, W, C] in [0, 1] -> planes [..., H, W] scaled to [0, 255]: (Y,) or (Y, I, Q)."""
  x = 255.0 * x
  if x.shape[-1] == 1:
    return (x[..., 0],)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  i = 0.596 * r - 0.274 * g - 0.322 * b
  q = 0.211 * r - 0.523 * g + 0.312 * b
  return (y, i, q)


def _haarpsi_features(x, subsample):
  """Per-image HaarPSI features: (|h_j^k * Y| for j = 1, 2, 3, k = 1, 2; |m * I|, |m * Q|).

  Returns a dict of [..., h, w] arrays; the chroma entries are absent for grey images.
  """
  planes = _yiq_planes(x)
  if subsample:
    planes = tuple(_mean2x2(p)[..., ::2, ::2] for p in planes)
  feats = {f"y{j}{k}": _haar(planes[0], j, k) for j in (1, 2, 3) for k in (0, 1)}
  if len(planes) == 3:
    feats["i"] = jnp.abs(_mean2x2(planes[1]))
    feats["q"] = jnp.abs(_mean2x2(planes[2]))
  return feats


def _haarpsi_from_features(fa, fb):
  """HaarPSI from the features of two (broadcasting) image batches."""
  c = HAARPSI_C
  sims = []
  weights = []
  for k in (0, 1):
    sims.append(0.5 * (_similarity(fa[f"y1{k}"], fb[f"y1{k}"], c)
                       + _similarity(fa[f"y2{k}"], fb[f"y2{k}"], c)))
    weights.append(jnp.maximum(fa[f"y3{k}"], fb[f"y3{k}"]))
  if "i" in fa:
    sims.append(0.5 * (_similarity(fa["i"], fb["i"], c) + _similarity(fa["q"], fb["q"], c)))
    weights.append(0.5 * (weights[0] + weights[1]))
  sims = jnp.stack(sims, axis=-1)
  weights = jnp.stack(weights, axis=-1)
  alpha = HAARPSI_ALPHA
  axes = (-3, -2, -1)
  # l^-1(y) with y = sum(l w) / sum(w); 1 - y = sum(l(-t) w) / sum(w) avoids the cancellation
  # in 1 - y when y is near 1 (worth ~1e-5 in float32).
  pos = jnp.sum(jax.nn.sigmoid(alpha * sims) * weights, axis=axes)
  neg = jnp.sum(jax.nn.sigmoid(-alpha * sims) * weights, axis=axes)
  return ((jnp.log(pos) - jnp.log(neg)) / alpha) ** 2


@functools.partial(jax.jit, static_argnums=2)
def _haarpsi(a, b, subsample):
  return _haarpsi_from_features(_haarpsi_features(a, subsample), _haarpsi_features(b, subsample))


def haarpsi_matrix(a: jax.Array, b: jax.Array, subsample: bool = True,
                   chunk_size: int = 16) -> jax.Array:
  """HaarPSI of every pair (a[i], b[j]); equals `haarpsi(a[i], b[j], subsample)`.

  Wavelet features are computed once per image and combined per pair; rows of a are processed
  `chunk_size` at a time with `lax.map`.

  Args:
    a: images [M, H, W, C], C in {1, 3}, in [0, 1].
    b: images [T, H, W, C] in [0, 1].
    subsample: see `haarpsi`.
    chunk_size: rows of a scored at once (static).

  Returns:
    [M, T] HaarPSI scores.
  """
  _check_images("a", a)
  _check_images("b", b)
  if np.ndim(a) != 4 or np.ndim(b) != 4 or np.shape(a)[1:] != np.shape(b)[1:]:
    raise ValueError(f"haarpsi_matrix needs a [M,H,W,C] and b [T,H,W,C] with equal H, W, C; "
                     f"got {np.shape(a)} and {np.shape(b)}.")
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")
  _check_haarpsi_shape(np.shape(a), subsample)
  return _haarpsi_matrix(jnp.asarray(a), jnp.asarray(b), bool(subsample), int(chunk_size))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _haarpsi_matrix(a, b, subsample, chunk_size):
  fb = _haarpsi_features(b, subsample)

  def row(a_i):
    fa = jax.tree.map(lambda v: v[None], _haarpsi_features(a_i, subsample))
    return _haarpsi_from_features(fa, fb)

  return jax.lax.map(row, a, batch_size=min(chunk_size, a.shape[0]))
