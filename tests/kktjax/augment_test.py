"""Tests for kktjax.augment: EDM's AugmentPipe (CIFAR-10 settings) in JAX.

References are SPEC §5 and an independent float64 NumPy transcription of EDM's pipeline
(`_reference_pipe`: data-dependent margin, affine_grid/grid_sample in normalised coordinates).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktjax import augment

H = W = 32
N = 4  # One batch size for augment_batch keeps the number of compilations down.
ROUNDOFF = 1e-6  # Observed: identity / exact-shift warps differ from the input by <= 2e-7.


def _rand_images(rng, n):
  return rng.uniform(size=(n, H, W, 3)).astype(np.float32)


def _centred_grid():
  """(y, x) centred pixel coordinates, each [H, W]."""
  return np.meshgrid(np.arange(H) - (H - 1) / 2, np.arange(W) - (W - 1) / 2, indexing="ij")


def _smooth_fn(x, y):
  """A smooth analytic RGB image f(x, y) in [0, 1] of centred pixel coordinates."""
  x, y, c = x[..., None], y[..., None], np.arange(3.0)
  return (0.5 + 0.2 * np.sin(2 * np.pi * x / 40 + c) * np.cos(2 * np.pi * y / 50)
          + 0.1 * np.cos(2 * np.pi * (x + 2 * y) / 70 + 0.3 * c))


def _smooth_image():
  y, x = _centred_grid()
  return _smooth_fn(x, y).astype(np.float32)


def _params(**kw):
  """Single-image AugmentParams: identity except for the given fields."""
  p = augment.identity_params()._asdict()
  for k, v in kw.items():
    p[k] = jnp.asarray(v, p[k].dtype)
  return augment.AugmentParams(**p)


def _stack(params_list):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params_list)


_apply = jax.jit(augment.apply_params, static_argnames="margin")
_apply_batch = jax.jit(jax.vmap(augment.apply_params, in_axes=(0, 0, None, None)),
                       static_argnums=3)
_sample_batch = jax.jit(jax.vmap(augment.sample_params, in_axes=(0, None)))


# ----------------------------------------------------------------------------------------------
# Independent float64 NumPy transcription of EDM's pipeline (batch NCHW, EDM's batch margin).
# ----------------------------------------------------------------------------------------------


def _np_translate(tx, ty):
  m = np.zeros(np.shape(tx) + (3, 3))
  m[..., 0, 0] = m[..., 1, 1] = m[..., 2, 2] = 1
  m[..., 0, 2], m[..., 1, 2] = tx, ty
  return m


def _np_scale(sx, sy):
  m = np.zeros(np.broadcast_shapes(np.shape(sx), np.shape(sy)) + (3, 3))
  m[..., 0, 0], m[..., 1, 1], m[..., 2, 2] = sx, sy, 1
  return m


def _np_rotate(t):
  m = np.zeros(np.shape(t) + (3, 3))
  c, s = np.cos(t), np.sin(t)
  m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1] = c, -s, s, c
  m[..., 2, 2] = 1
  return m


def _np_g_inv(p, h, w):
  """SPEC §5: G⁻¹ = S(1/s)·R(w)·R(−r)·S(1/s_a, s_a)·R(r)·T(−shift), float64."""
  s = 2.0 ** (0.2 * p["scale"])
  sa = 2.0 ** (0.2 * p["aniso"])
  r = p["aniso_angle"]
  t = p["translate"]
  return (_np_scale(1 / s, 1 / s) @ _np_rotate(p["rotate"]) @ _np_rotate(-r)
          @ _np_scale(1 / sa, sa) @ _np_rotate(r) @ _np_translate(-0.125 * w * t[:, 0],
                                                                 -0.125 * h * t[:, 1]))


def _np_filter(x, taps, pad, stride=1):
  """torch conv1d (cross-correlation) along the last axis, zero padding, per channel."""
  xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)])
  n_out = (xp.shape[-1] - len(taps)) // stride + 1
  return sum(t * xp[..., k:k + stride * (n_out - 1) + 1:stride] for k, t in enumerate(taps))


def _np_zero_stuff(x):
  z = np.zeros(x.shape[:-1] + (2 * x.shape[-1] - 1,))
  z[..., ::2] = x
  return z


def _np_grid_sample(img, gx, gy):
  """grid_sample(bilinear, zeros, align_corners=False) of img [N, C, Hi, Wi]."""
  n, _, hi, wi = img.shape
  ix, iy = ((gx + 1) * wi - 1) / 2, ((gy + 1) * hi - 1) / 2
  x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
  out = 0
  for xx, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
    for yy, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
      ok = (xx >= 0) & (xx < wi) & (yy >= 0) & (yy < hi)
      v = img[np.arange(n)[:, None, None], :, np.clip(yy, 0, hi - 1), np.clip(xx, 0, wi - 1)]
      out = out + (wx * wy * ok)[..., None] * v  # [N, Ho, Wo, C]
  return out.transpose(0, 3, 1, 2)


def _reference_pipe(images, p, margin=None):
  """EDM AugmentPipe's geometric part, float64, given per-image parameters (numpy dict).

  images: [N, H, W, C] in [0, 1]. margin None: EDM's data-dependent batch margin.
  Returns ([N, H, W, C] in [0, 1], margin used).
  """
  hz = np.asarray(augment.SYM6, np.float64)  # The published sym6 constants.
  hz_pad = 3
  x = 2 * np.asarray(images, np.float64).transpose(0, 3, 1, 2) - 1
  n, _, h, w = x.shape
  x = np.where(p["xflip"][:, None, None, None] == 1, x[..., ::-1], x)
  x = np.where(p["yflip"][:, None, None, None] == 1, x[..., ::-1, :], x)
  g = _np_g_inv(p, h, w)
  if margin is None:
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cp = g @ np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T
    xy = cp[:, :2, :].transpose(1, 0, 2).reshape(2, -1)
    m = np.concatenate([-xy, xy]).max(1) + np.array([2 * hz_pad - cx, 2 * hz_pad - cy] * 2)
    m = np.minimum(np.maximum(m, 0), [w - 1, h - 1] * 2)
    margin = tuple(int(v) for v in np.ceil(m))
  mx0, my0, mx1, my1 = margin
  x = np.pad(x, ((0, 0), (0, 0), (my0, my1), (mx0, mx1)), mode="reflect")
  g = _np_translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ g
  # Upsample: zero-stuff, conv with reversed taps, padding (12 + 1) // 2 = 6; W then H.
  x = _np_filter(_np_zero_stuff(x), hz[::-1], 6)
  x = _np_filter(_np_zero_stuff(x.swapaxes(2, 3)), hz[::-1], 6).swapaxes(2, 3)
  g = _np_scale(2, 2) @ g @ _np_scale(0.5, 0.5)
  g = _np_translate(-0.5, -0.5) @ g @ _np_translate(0.5, 0.5)
  ho, wo = (h + 2 * hz_pad) * 2, (w + 2 * hz_pad) * 2
  hi, wi = x.shape[2:]
  g = _np_scale(2 / wi, 2 / hi) @ g @ _np_scale(wo / 2, ho / 2)
  # affine_grid(align_corners=False): normalised output pixel centres.
  bx = (2 * np.arange(wo) + 1) / wo - 1
  by = (2 * np.arange(ho) + 1) / ho - 1
  bx, by = np.meshgrid(bx, by)
  gx = g[:, 0, 0, None, None] * bx + g[:, 0, 1, None, None] * by + g[:, 0, 2, None, None]
  gy = g[:, 1, 0, None, None] * bx + g[:, 1, 1, None, None] * by + g[:, 1, 2, None, None]
  x = _np_grid_sample(x, gx, gy)
  # Downsample: conv with taps, stride 2, padding (12 - 1) // 2 = 5, crop 3; W then H.
  x = _np_filter(x, hz, 5, stride=2)[..., hz_pad:-hz_pad]
  x = _np_filter(x.swapaxes(2, 3), hz, 5, stride=2)[..., hz_pad:-hz_pad].swapaxes(2, 3)
  return ((x + 1) / 2).transpose(0, 2, 3, 1), margin


def _np_params(params):
  return {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}


# ----------------------------------------------------------------------------------------------
# Filter and identity.
# ----------------------------------------------------------------------------------------------


def test_sym6_is_an_orthogonal_lowpass():
  hz = augment.SYM6
  assert len(hz) == 12 and augment.HZ_PAD == 3
  np.testing.assert_allclose(hz.sum(), math.sqrt(2), atol=1e-12)
  for m in range(6):  # sum_k h[k] h[k + 2m] = δ_m (double-shift orthonormality).
    np.testing.assert_allclose(np.dot(hz[:12 - 2 * m], hz[2 * m:]), float(m == 0), atol=1e-12)


def test_gated_off_returns_the_image():
  rng = np.random.default_rng(0)
  images = (rng.uniform(size=(N, H, W, 3)) * 255).astype(np.uint8)
  out, labels = augment.augment_batch(jax.random.key(0), images, augment.AugmentConfig(p=0.0))
  assert out.shape == (N, H, W, 3) and out.dtype == jnp.float32
  assert labels.shape == (N, 9) and labels.dtype == jnp.float32
  np.testing.assert_array_equal(labels, 0)
  # sym6 perfect reconstruction: only float32 round-off remains (observed max 1.3e-7).
  np.testing.assert_allclose(out, images / 255.0, rtol=0, atol=ROUNDOFF)


@pytest.mark.parametrize("xflip,yflip", [(1, 0), (0, 1), (1, 1)])
def test_flips_are_pixel_flips(xflip, yflip):
  img = _rand_images(np.random.default_rng(1), 1)[0]
  out = _apply(img, _params(xflip=xflip, yflip=yflip))
  expected = img[:, ::-1] if xflip else img
  expected = expected[::-1] if yflip else expected
  np.testing.assert_allclose(out, expected, rtol=0, atol=ROUNDOFF)


# ----------------------------------------------------------------------------------------------
# Labels.
# ----------------------------------------------------------------------------------------------


def test_label_order_and_values():
  p = _params(xflip=1, yflip=0, scale=0.7, rotate=1.1, aniso=-0.4, aniso_angle=2.5,
              translate=[0.3, -1.2])
  expected = [1, 0, 0.7, math.cos(1.1) - 1, math.sin(1.1), -0.4 * math.cos(2.5),
              -0.4 * math.sin(2.5), 0.3, -1.2]
  np.testing.assert_allclose(augment.augment_labels(p), expected, rtol=1e-6, atol=1e-7)
  assert augment.LABEL_NAMES[3] == "rotate_cos_minus_1" and len(augment.LABEL_NAMES) == 9
  np.testing.assert_array_equal(augment.augment_labels(augment.identity_params((5,))), 0)


def test_labels_round_trip_from_sampled_params():
  keys = jax.random.split(jax.random.key(3), N)
  images = _rand_images(np.random.default_rng(3), N)
  config = augment.AugmentConfig(p=0.5)
  _, labels = augment.augment_batch(keys, images, config)
  p = _np_params(_sample_batch(keys, config))
  expected = np.stack([p["xflip"], p["yflip"], p["scale"], np.cos(p["rotate"]) - 1,
                       np.sin(p["rotate"]), p["aniso"] * np.cos(p["aniso_angle"]),
                       p["aniso"] * np.sin(p["aniso_angle"]), p["translate"][:, 0],
                       p["translate"][:, 1]], axis=1)
  np.testing.assert_allclose(labels, expected, rtol=1e-6, atol=1e-6)
  # Recover the transform parameters from the labels.
  np.testing.assert_allclose(np.arctan2(labels[:, 4], labels[:, 3] + 1), p["rotate"], atol=1e-5)
  np.testing.assert_allclose(np.hypot(labels[:, 5], labels[:, 6]), np.abs(p["aniso"]), atol=1e-6)
  # Gated off: zero labels.
  _, labels0 = augment.augment_batch(keys, images, augment.AugmentConfig(p=0.0))
  np.testing.assert_array_equal(labels0, 0)


def test_batch_uses_split_keys_and_matches_single_image():
  key = jax.random.key(4)
  images = _rand_images(np.random.default_rng(4), N)
  config = augment.AugmentConfig(p=0.5)
  out, labels = augment.augment_batch(key, images, config)
  keys = jax.random.split(key, N)
  params = _sample_batch(keys, config)
  np.testing.assert_array_equal(labels, augment.augment_labels(params))
  for i in range(N):
    p_i = jax.tree_util.tree_map(lambda v: v[i], params)
    np.testing.assert_allclose(out[i], _apply(images[i], p_i, config), rtol=0, atol=1e-6)
  out1, labels1 = augment.augment(keys[1], images[1], config)
  np.testing.assert_allclose(out1, out[1], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(labels1, labels[1])


# ----------------------------------------------------------------------------------------------
# Parameter statistics (SPEC §5 table).
# ----------------------------------------------------------------------------------------------


def _ks_distance(samples, cdf):
  x = np.sort(samples)
  f = cdf(x)
  n = len(x)
  return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


_normal_cdf = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))


def test_sampled_parameter_statistics():
  n = 20000
  p = _np_params(_sample_batch(jax.random.split(jax.random.key(5), n), augment.AugmentConfig()))
  tol_rate = lambda q: 5 * math.sqrt(q * (1 - q) / n)  # 5 sigma.
  ks_crit = lambda m: 1.95 / math.sqrt(m)  # KS critical value at alpha = 0.001.

  # x-flip: gate always on, w ~ Bernoulli(1/2); y-flip: gated with 0.12, then Bernoulli(1/2).
  assert set(np.unique(p["xflip"])) <= {0, 1} and set(np.unique(p["yflip"])) <= {0, 1}
  assert abs(p["xflip"].mean() - 0.5) < tol_rate(0.5)
  assert abs(p["yflip"].mean() - 0.06) < tol_rate(0.06)

  gates = {}
  for name in ("scale", "rotate", "aniso"):
    gates[name] = p[name] != 0
  gates["translate"] = p["translate"][:, 0] != 0
  np.testing.assert_array_equal(gates["translate"], p["translate"][:, 1] != 0)  # One gate.
  for name, on in gates.items():
    assert abs(on.mean() - 0.12) < tol_rate(0.12), name
  # Independent gates.
  assert abs((gates["scale"] & gates["rotate"]).mean() - 0.0144) < tol_rate(0.0144)
  assert abs((gates["aniso"] & gates["translate"]).mean() - 0.0144) < tol_rate(0.0144)

  # Values where gated on.
  for w in (p["scale"][gates["scale"]], p["aniso"][gates["aniso"]],
            p["translate"][gates["translate"]].ravel()):
    assert _ks_distance(w, _normal_cdf) < ks_crit(len(w))
  rot = p["rotate"][gates["rotate"]]
  assert np.all(np.abs(rot) <= np.float32(np.pi))
  assert _ks_distance(rot, lambda v: (v + np.pi) / (2 * np.pi)) < ks_crit(len(rot))
  # Anisotropic frame angle: rotated with probability 1/2 (given the gate), then U(−π, π).
  r = p["aniso_angle"][gates["aniso"]]
  assert abs((r != 0).mean() - 0.5) < 5 * math.sqrt(0.25 / len(r))
  assert np.all(p["aniso_angle"][~gates["aniso"]] == 0)
  r = r[r != 0]
  assert _ks_distance(r, lambda v: (v + np.pi) / (2 * np.pi)) < ks_crit(len(r))


# ----------------------------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w0,w1", [(1.0, 0.0), (0.0, -0.5), (-0.75, 0.25)])
def test_integer_translation_is_an_exact_shift(w0, w1):
  # shift = 0.125·(W·w0, H·w1) px; content moves by +shift (G⁻¹ contains T(−shift)), and the
  # uncovered border is the reflect-padded image, so the whole output is exact.
  img = _rand_images(np.random.default_rng(6), 1)[0]
  dx, dy = int(0.125 * W * w0), int(0.125 * H * w1)
  out = _apply(img, _params(translate=[w0, w1]))
  m = 8
  padded = np.pad(img, ((m, m), (m, m), (0, 0)), mode="reflect")
  expected = padded[m - dy:m - dy + H, m - dx:m - dx + W]
  np.testing.assert_allclose(out, expected, rtol=0, atol=ROUNDOFF)
  # Away from the borders this is np.roll.
  rolled = np.roll(img, (dy, dx), axis=(0, 1))
  np.testing.assert_allclose(out[8:-8, 8:-8], rolled[8:-8, 8:-8], rtol=0, atol=ROUNDOFF)


@pytest.mark.parametrize("angle", [np.pi / 2, np.pi / 6, -2.0])
def test_rotation_direction_and_centre(angle):
  # G⁻¹ = R(w): output(x, y) = input(R(w)·(x, y)) about the image centre, R = [[c, −s], [s, c]].
  # Checked on a smooth analytic image where R(w)·(x, y) stays 4 px inside it. sym6 is not
  # linear-phase, so this is not exact (observed error <= 6e-3); the opposite direction errs by
  # > 0.05.
  f = _smooth_fn
  out = np.asarray(_apply(_smooth_image(), _params(rotate=angle)))
  y, x = _centred_grid()
  c, s = math.cos(angle), math.sin(angle)
  x_in, y_in = c * x - s * y, s * x + c * y
  inside = (np.abs(x_in) < 12) & (np.abs(y_in) < 12)
  assert inside.sum() > 300
  assert np.abs(out - f(x_in, y_in))[inside].max() < 1.5e-2
  assert np.abs(out - f(c * x + s * y, -s * x + c * y))[inside].max() > 0.05


def test_half_turn_of_a_symmetric_pattern():
  # A pattern with f(−x, −y) = f(x, y) is left (nearly) unchanged by R(π) everywhere; a pattern
  # without that symmetry is flipped (observed errors <= 1e-2, sym6's phase again).
  y, x = _centred_grid()
  sym = (0.5 + 0.3 * np.cos(2 * np.pi * x / 23) * np.cos(2 * np.pi * y / 29)
         + 0.1 * np.cos(2 * np.pi * (x - y) / 37))[..., None].repeat(3, -1).astype(np.float32)
  np.testing.assert_allclose(_apply(sym, _params(rotate=np.pi)), sym, rtol=0, atol=1.5e-2)
  img = _smooth_image()
  out = np.asarray(_apply(img, _params(rotate=-np.pi)))
  np.testing.assert_allclose(out, img[::-1, ::-1], rtol=0, atol=1.5e-2)
  assert np.abs(out - img).max() > 0.1


def test_isotropic_scale_magnifies_a_smooth_image():
  # w = 5: s = 2^(0.2·5) = 2; output(x) = input(x / 2) about the centre.
  img = _smooth_image()
  out = np.asarray(_apply(img, _params(scale=5.0)))
  y, x = _centred_grid()
  expected = _smooth_fn(x / 2, y / 2)
  # Resampling error of a smooth image (observed 1.4e-3); a wrong direction errs by > 0.05.
  np.testing.assert_allclose(out, expected, rtol=0, atol=3e-3)
  wrong = _smooth_fn(2 * x, 2 * y)
  assert np.abs(out - wrong)[8:-8, 8:-8].max() > 0.05


# ----------------------------------------------------------------------------------------------
# Against the float64 NumPy transcription, and cap padding vs EDM's data-dependent margin.
# ----------------------------------------------------------------------------------------------


_FIXED = [
    dict(xflip=1, yflip=1, scale=0.8, rotate=0.6, aniso=-1.1, aniso_angle=0.9,
         translate=[0.4, -0.7]),
    dict(xflip=0, yflip=1, scale=-1.5, rotate=-2.9, aniso=1.7, aniso_angle=0.0,
         translate=[-1.3, 0.2]),
    dict(xflip=1, yflip=0, scale=0.0, rotate=0.2, aniso=0.0, aniso_angle=0.0,
         translate=[0.0, 0.0]),
]


def test_warp_matches_numpy_reference_with_cap_and_edm_margin():
  # Three fixed parameter sets and five sampled with every gate on (p = 1), noise images. EDM
  # pads the batch by a margin that depends on its transforms; the static cap gives the same
  # result to float32 round-off. Observed max differences: ~2e-5 (vs float64 reference and
  # cap vs margin); torch AugmentPipe vs this port: ~2e-5 as well (outside the test suite).
  config = augment.AugmentConfig(p=1.0)
  sampled = _sample_batch(jax.random.split(jax.random.key(9), 5), config)
  p = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]),
                             _stack([_params(**d) for d in _FIXED]), sampled)
  images = _rand_images(np.random.default_rng(9), 8)
  g = jax.vmap(lambda q: augment.transform_matrix(q, H, W, config))(p)
  np.testing.assert_allclose(g, _np_g_inv(_np_params(p), H, W), rtol=0, atol=1e-5)
  ref, ref_margin = _reference_pipe(images, _np_params(p))
  margin = augment.edm_margin(g, H, W)
  assert margin == ref_margin and margin != augment.cap_margin(H, W)
  out_margin = _apply_batch(images, p, config, margin)
  out_cap = _apply_batch(images, p, config, None)
  np.testing.assert_allclose(out_margin, ref, rtol=0, atol=5e-5)
  np.testing.assert_allclose(out_cap, ref, rtol=0, atol=5e-5)
  np.testing.assert_allclose(out_cap, out_margin, rtol=0, atol=5e-5)
  assert np.abs(out_cap - images).mean() > 0.1  # The transforms did something.


# ----------------------------------------------------------------------------------------------
# Input validation.
# ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
  key = jax.random.key(0)
  images = np.zeros((2, H, W, 3), np.float32)
  with pytest.raises(ValueError, match="4-d"):
    augment.augment_batch(key, images[0])
  with pytest.raises(ValueError, match="keys"):
    augment.augment_batch(jax.random.split(key, 3), images)
  with pytest.raises(ValueError, match="dtype"):
    augment.augment_batch(key, images.astype(np.int32))
  with pytest.raises(ValueError, match="unknown"):
    augment.augment_batch(key, images, {"p": 0.1, "hue": 1.0})
  with pytest.raises(ValueError, match=">= 0"):
    augment.augment(key, images[0], augment.AugmentConfig(p=-0.1))
