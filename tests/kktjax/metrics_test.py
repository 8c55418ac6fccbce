"""Tests for kktjax.metrics against SPEC anchors and independent float64 NumPy formulas."""

import jax
import numpy as np
import pytest

from kktjax import metrics


def _synthetic_pair():
  """The synthetic test images of SPEC §4.5, HWC in [0, 1], float64."""
  i = np.arange(32.0)[:, None, None]
  j = np.arange(32.0)[None, :, None]
  c = np.arange(3.0)[None, None, :]
  ref = 0.5 + 0.25 * np.sin(2 * np.pi * i / 8 + c) * np.cos(2 * np.pi * j / 11)
  ref = ref + 0.2 * (i + j) / 62 - 0.1
  d_hf = np.clip(ref + 0.05 * np.sin(3.1 * i + 1.7 * j + 0.5 * c), 0, 1)
  d_lf = np.clip(ref + 0.08 * np.sin(2 * np.pi * i / 5 + 2 * np.pi * j / 7 + c), 0, 1)
  return ref, d_hf, d_lf


def _smooth_images(rng, n, h=32, w=32, c=3):
  """Random images in [0, 1] with some spatial structure (blurred noise)."""
  x = rng.uniform(size=(n, h + 2, w + 2, c))
  x = (x[:, :-2, :-2] + x[:, 1:-1, 1:-1] + x[:, 2:, 2:] + x[:, 1:-1, :-2]) / 4
  return np.clip(x, 0, 1)


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------

_SSIM_ANCHORS = {("haim", "hf"): 0.905538, ("haim", "lf"): 0.813898,
                 ("wang", "hf"): 0.957455, ("wang", "lf"): 0.896354}


@pytest.mark.parametrize("variant,pair", sorted(_SSIM_ANCHORS))
def test_ssim_spec_anchors(variant, pair):
  ref, d_hf, d_lf = _synthetic_pair()
  other = d_hf if pair == "hf" else d_lf
  with jax.enable_x64(True):
    got = float(metrics.ssim(ref, other, variant))
  assert got == pytest.approx(_SSIM_ANCHORS[(variant, pair)], abs=6e-7)
  got32 = float(metrics.ssim(ref.astype(np.float32), other.astype(np.float32), variant))
  assert got32 == pytest.approx(_SSIM_ANCHORS[(variant, pair)], abs=2e-5)


def _np_ssim_haim(a, b):
  """kornia-style 3x3 SSIM in float64 NumPy: reflect pad, Gaussian sigma 1.5, population stats."""
  t = np.exp(-0.5 * (np.array([-1.0, 0.0, 1.0]) / 1.5) ** 2)
  t /= t.sum()
  kernel = np.outer(t, t)

  def filt(z):
    zp = np.pad(z, [(1, 1), (1, 1), (0, 0)], mode="reflect")
    h, w = z.shape[:2]
    return sum(kernel[di, dj] * zp[di:di + h, dj:dj + w] for di in range(3) for dj in range(3))

  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mu_a, mu_b = filt(a), filt(b)
  s_aa = filt(a * a) - mu_a ** 2
  s_bb = filt(b * b) - mu_b ** 2
  s_ab = filt(a * b) - mu_a * mu_b
  m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) *
                                                     (s_aa + s_bb + c2))
  return m.mean()


def test_ssim_haim_matches_numpy_reference_with_batch_axes():
  rng = np.random.default_rng(0)
  a = _smooth_images(rng, 6, 12, 10, 3).reshape(2, 3, 12, 10, 3)
  b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(metrics.ssim)(a, b))
  assert got.shape == (2, 3)
  want = np.array([[_np_ssim_haim(a[i, j], b[i, j]) for j in range(3)] for i in range(2)])
  np.testing.assert_allclose(got, want, atol=1e-10)


def test_ssim_identical_is_one_and_unknown_variant_raises():
  ref, _, _ = _synthetic_pair()
  assert float(metrics.ssim(ref, ref)) == pytest.approx(1.0, abs=1e-6)
  with pytest.raises(ValueError, match="haim"):
    metrics.ssim(ref, ref, variant="kornia")
  with pytest.raises(ValueError, match="shapes"):
    metrics.ssim(ref, ref[:16])
  with pytest.raises(ValueError, match="float"):
    metrics.ssim((255 * ref).astype(np.uint8), (255 * ref).astype(np.uint8))
  with pytest.raises(ValueError, match="11"):
    metrics.ssim(ref[:8, :8], ref[:8, :8], variant="wang")


@pytest.mark.parametrize("variant", ["haim", "wang"])
def test_ssim_matrix_matches_loop(variant):
  rng = np.random.default_rng(1)
  a = _smooth_images(rng, 5, 16, 16).astype(np.float32)
  b = _smooth_images(rng, 4, 16, 16).astype(np.float32)
  got = np.asarray(jax.jit(metrics.ssim_matrix, static_argnums=(2, 3))(a, b, variant, 2))
  want = np.array([[float(metrics.ssim(a[i], b[j], variant)) for j in range(4)]
                   for i in range(5)])
  assert got.shape == (5, 4)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_psnr_matches_formula():
  rng = np.random.default_rng(2)
  a = rng.uniform(size=(3, 8, 8, 3))
  b = np.clip(a + 0.05 * rng.normal(size=a.shape), 0, 1)
  with jax.enable_x64(True):
    got = np.asarray(metrics.psnr(a, b))
    got255 = np.asarray(metrics.psnr(255 * a, 255 * b, max_val=255.0))
  want = 10 * np.log10(1.0 / ((a - b) ** 2).mean(axis=(1, 2, 3)))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(got255, want, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# NCC distance
# ----------------------------------------------------------------------------------------------


def _np_ncc_direct(a, b, channels=3):
  """d = 2 (P - 1) sum_c (1 - rho_c) from Pearson correlations, float64, pair by pair."""
  m, t = a.shape[0], b.shape[0]
  a = a.reshape(m, channels, -1)
  b = b.reshape(t, channels, -1)
  p = a.shape[-1]
  d = np.zeros((m, t))
  for i in range(m):
    for j in range(t):
      rho = [np.corrcoef(a[i, c], b[j, c])[0, 1] for c in range(channels)]
      d[i, j] = 2 * (p - 1) * np.sum(1 - np.array(rho))
  return d


def _np_ncc_sum_squares(a, b, channels=3):
  """The definition: sum of squared differences of per-channel standardised vectors (ddof=1)."""
  def std(x):
    x = x.reshape(x.shape[0], channels, -1)
    return ((x - x.mean(-1, keepdims=True)) / x.std(-1, ddof=1, keepdims=True)).reshape(
        x.shape[0], -1)
  za, zb = std(a), std(b)
  return ((za[:, None, :] - zb[None, :, :]) ** 2).sum(-1)


def test_ncc_distance_matrix_matches_float64_formulas():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(5, 3 * 32 * 32))
  b = np.concatenate([a[:2] * 2.5 + 0.3 * rng.normal(size=(2, 3072)),
                      rng.normal(size=(3, 3072))])
  want = _np_ncc_direct(a, b)
  np.testing.assert_allclose(want, _np_ncc_sum_squares(a, b), rtol=1e-10)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(metrics.ncc_distance_matrix)(a, b))
  assert got.shape == (5, 5)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-8)
  got32 = np.asarray(metrics.ncc_distance_matrix(a.astype(np.float32), b.astype(np.float32)))
  np.testing.assert_allclose(got32, want, rtol=1e-4, atol=0.05)


def test_ncc_distance_range_and_channels():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(2, 3072))
  with jax.enable_x64(True):
    d = np.asarray(metrics.ncc_distance_matrix(a, np.concatenate([3 * a + 1, -a])))
  np.testing.assert_allclose(np.diag(d[:, :2]), 0.0, atol=1e-9)  # Identical up to affine map.
  np.testing.assert_allclose(np.diag(d[:, 2:]), 12276.0, rtol=1e-12)  # Anticorrelated: max.
  g = rng.normal(size=(3, 64))
  h = rng.normal(size=(2, 64))
  with jax.enable_x64(True):
    got = np.asarray(metrics.ncc_distance_matrix(g, h, channels=1))
  np.testing.assert_allclose(got, _np_ncc_direct(g, h, channels=1), rtol=1e-10)
  # vmap over victims (leading axis on both pools), as the KKT abort rule does.
  gv, hv = g.reshape(1, 3, 64).repeat(2, 0), h.reshape(1, 2, 64).repeat(2, 0)
  with jax.enable_x64(True):
    got_v = np.asarray(jax.vmap(lambda p, q: metrics.ncc_distance_matrix(p, q, 1))(gv, hv))
  np.testing.assert_allclose(got_v, np.stack([got, got]), rtol=1e-12)
  with pytest.raises(ValueError, match="channels"):
    metrics.ncc_distance_matrix(g[:, :62], h[:, :62], channels=3)
  with pytest.raises(ValueError, match=r"\[M, D\]"):
    metrics.ncc_distance_matrix(g, h[:, :32])


# ----------------------------------------------------------------------------------------------
# PyTorch-semantics bicubic x1/2
# ----------------------------------------------------------------------------------------------


def _np_downsample2_matrix(n):
  """The fixed 4-tap PyTorch bicubic x1/2 matrix: output o uses inputs 2o-1..2o+2, clamped."""
  w = np.array([-0.09375, 0.59375, 0.59375, -0.09375])
  mat = np.zeros((n // 2, n))
  for o in range(n // 2):
    for k, tap in enumerate(w):
      mat[o, min(max(2 * o - 1 + k, 0), n - 1)] += tap
  return mat


def test_pytorch_bicubic_downsample2_matches_4tap_formula():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 8, 6, 3))  # HWC
  rows, cols = _np_downsample2_matrix(8), _np_downsample2_matrix(6)
  want = np.einsum("oh,nhwc,pw->nopc", rows, x, cols)
  y = rng.normal(size=(2, 3, 10, 4))  # [..., H, W]
  want_y = np.einsum("oh,nchw,pw->ncop", _np_downsample2_matrix(10), y,
                     _np_downsample2_matrix(4))
  with jax.enable_x64(True):
    got = np.asarray(metrics.pytorch_bicubic_downsample2(x))
    got_y = np.asarray(metrics.pytorch_bicubic_downsample2(y, axes=(-2, -1)))
  np.testing.assert_allclose(got, want, atol=1e-14)
  np.testing.assert_allclose(got_y, want_y, atol=1e-14)
  with pytest.raises(ValueError, match="even"):
    metrics.pytorch_bicubic_downsample2(x[:, :7])


# ----------------------------------------------------------------------------------------------
# HaarPSI
# ----------------------------------------------------------------------------------------------

_HAARPSI_ANCHORS = [("hf", True, 0.9999202939), ("lf", True, 0.8747988423),
                    ("hf", False, 0.8872341626), ("lf", False, 0.7170273187)]


@pytest.mark.parametrize("pair,subsample,want", _HAARPSI_ANCHORS)
def test_haarpsi_spec_anchors(pair, subsample, want):
  ref, d_hf, d_lf = _synthetic_pair()
  other = d_hf if pair == "hf" else d_lf
  with jax.enable_x64(True):
    got = float(metrics.haarpsi(ref, other, subsample=subsample))
  assert got == pytest.approx(want, abs=1e-9)
  got32 = float(metrics.haarpsi(ref.astype(np.float32), other.astype(np.float32), subsample))
  assert got32 == pytest.approx(want, abs=1e-5)


def test_haarpsi_grey_anchor_and_identity():
  ref, _, d_lf = _synthetic_pair()
  with jax.enable_x64(True):
    grey = float(metrics.haarpsi(ref[..., :1], d_lf[..., :1]))
    same = float(metrics.haarpsi(ref, ref, subsample=False))
  assert grey == pytest.approx(0.8185686321, abs=1e-9)
  assert same == pytest.approx(1.0, abs=1e-12)
  with pytest.raises(ValueError, match="C = 1"):
    metrics.haarpsi(ref[..., :2], d_lf[..., :2])
  with pytest.raises(ValueError, match="H, W >= 16"):
    metrics.haarpsi(ref[:8, :8], ref[:8, :8])


def test_haarpsi_matrix_matches_loop_and_batched_call():
  rng = np.random.default_rng(6)
  a = _smooth_images(rng, 3, 16, 16).astype(np.float32)
  b = _smooth_images(rng, 4, 16, 16).astype(np.float32)
  got = np.asarray(metrics.haarpsi_matrix(a, b, True, 2))
  shape = (3, 4, 16, 16, 3)
  batched = np.asarray(jax.jit(metrics.haarpsi)(np.broadcast_to(a[:, None], shape),
                                                np.broadcast_to(b[None], shape)))
  want = np.array([[float(metrics.haarpsi(a[i], b[j])) for j in range(4)] for i in range(3)])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(batched, want, atol=1e-6)
