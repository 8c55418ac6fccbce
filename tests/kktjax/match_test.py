"""Tests for kktjax.match: post-processing, the confident-match rule and evaluation matching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kktjax import match
from kktjax import metrics

# ----------------------------------------------------------------------------------------------
# Post-processing
# ----------------------------------------------------------------------------------------------


def _np_rscale(x, mu):
  """Float64 NumPy r* post-processing, entry by entry, as written in SPEC §4.1."""
  mu = np.clip(mu, 0, 1)
  images, rs = [], []
  for xi in x.reshape((-1,) + x.shape[-3:]):
    cands = []
    for v, m in zip(xi.ravel(), np.broadcast_to(mu, xi.shape).ravel()):
      if v > 0:
        cands.append((1 - m) / v)
      elif v < 0:
        cands.append(-m / v)
    r = max(min(cands), 0.0) if cands else 0.0
    rs.append(r)
    images.append(r * xi + mu)
  return np.array(images).reshape(x.shape), np.array(rs).reshape(x.shape[:-3])


def _test_x_mu(rng, batch=(2, 3), hwc=(4, 5, 3)):
  x = rng.normal(size=batch + hwc)
  x[0, 0, 0, 0, 0] = 0.0  # Skipped entries.
  x[1, 2, 1, :, 2] = 0.0
  mu = rng.uniform(-0.05, 1.05, size=hwc)  # Overshoots [0, 1]: must be clipped.
  return x, mu


def test_postprocess_rscale_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x, mu = _test_x_mu(rng)
  want_img, want_r = _np_rscale(x, mu)
  with jax.enable_x64(True):
    img, r = jax.jit(match.postprocess_rscale)(x, mu)
  assert img.shape == x.shape and r.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(r), want_r, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(img), want_img, atol=1e-12)
  # vmap over victims: one mu per victim.
  mus = np.stack([mu, 1 - mu])
  with jax.enable_x64(True):
    img_v, r_v = jax.vmap(match.postprocess_rscale)(np.stack([x, x]), mus)
  np.testing.assert_allclose(np.asarray(r_v[1]), _np_rscale(x, 1 - mu)[1], rtol=1e-12)
  np.testing.assert_allclose(np.asarray(img_v[0]), want_img, atol=1e-12)
  img32, r32 = match.postprocess_rscale(x.astype(np.float32), mu.astype(np.float32))
  np.testing.assert_allclose(np.asarray(img32), want_img, atol=1e-5)
  np.testing.assert_allclose(np.asarray(r32), want_r, rtol=1e-5)


def test_postprocess_rscale_scale_invariant_in_range_and_tight():
  rng = np.random.default_rng(1)
  x, mu = _test_x_mu(rng)
  with jax.enable_x64(True):
    img, r = match.postprocess_rscale(x, mu)
    img_scaled, r_scaled = match.postprocess_rscale(37.5 * x, mu)
    img_zero, r_zero = match.postprocess_rscale(np.zeros((1, 4, 5, 3)), mu)
  img = np.asarray(img)
  np.testing.assert_allclose(np.asarray(img_scaled), img, atol=1e-12)
  np.testing.assert_allclose(np.asarray(r_scaled) * 37.5, np.asarray(r), rtol=1e-12)
  assert img.min() >= 0.0 and img.max() <= 1.0
  # r* is the largest feasible r, so in every image some entry touches 0 or 1.
  flat = img.reshape(6, -1)
  touches = (np.abs(flat) < 1e-12) | (np.abs(flat - 1) < 1e-12)
  assert touches.any(axis=1).all()
  np.testing.assert_array_equal(np.asarray(r_zero), [0.0])
  np.testing.assert_allclose(np.asarray(img_zero)[0], np.clip(mu, 0, 1))


def test_postprocess_minmax_and_dispatch():
  rng = np.random.default_rng(2)
  x, mu = _test_x_mu(rng)
  v = x + mu
  vmin = v.min(axis=(-3, -2, -1), keepdims=True)
  vmax = v.max(axis=(-3, -2, -1), keepdims=True)
  with jax.enable_x64(True):
    got = np.asarray(match.postprocess_minmax(x, mu))
    via_mode = np.asarray(match.postprocess(x, mu, mode="minmax"))
    via_default = np.asarray(match.postprocess(x, mu))
    rscale_img = np.asarray(match.postprocess_rscale(x, mu)[0])
  np.testing.assert_allclose(got, (v - vmin) / (vmax - vmin), atol=1e-12)
  np.testing.assert_array_equal(via_mode, got)
  np.testing.assert_array_equal(via_default, rscale_img)
  with pytest.raises(ValueError, match="rscale"):
    match.postprocess(x, mu, mode="clip")
  with pytest.raises(ValueError, match="broadcast"):
    match.postprocess_rscale(x, mu[:, :, :2])


# ----------------------------------------------------------------------------------------------
# Confident matching
# ----------------------------------------------------------------------------------------------


def _np_confident(scores, threshold=0.4, gap=0.05, tol=1e-6):
  """Plain-Python reference of SPEC §4.3 for one candidate: scores [S, T]."""
  best = None  # (b1, snapshot, target)
  targets = set()
  count = 0
  for s, row in enumerate(scores):
    order = np.argsort(-row, kind="stable")
    b1, b2 = row[order[0]], row[order[1]]
    if b1 > threshold and b1 - b2 >= gap - tol:
      count += 1
      targets.add(int(order[0]))
      if best is None or b1 > best[0]:
        best = (b1, s, int(order[0]))
  if best is None:
    return False, -1, False, count
  return True, best[2], len(targets) > 1, count


def test_confident_matches_constructed_cases():
  f = np.float32
  # [N_cand=7, S=3, T=4]; default fill 0.1 (never confident).
  s = np.full((7, 3, 4), 0.1, f)
  s[0, :, 2] = 0.39  # Below threshold everywhere.
  s[1, 1, 3] = 0.45  # Gap 0.05 (0.04999998 in float32) -> confident for T=3 at snapshot 1.
  s[1, 1, 0] = 0.4
  s[2, 0, 1] = 0.6  # Gap 0.049 -> not confident.
  s[2, 0, 2] = 0.551
  s[3, 2, 0] = 0.7  # Tie between T=0 and T=1 -> margin 0, not confident.
  s[3, 2, 1] = 0.7
  s[4, 0, 1] = 0.7  # Conflict: snapshot 0 confident for T=1 (b1 0.7),
  s[4, 2, 2] = 0.8  # snapshot 2 confident for T=2 with higher b1 -> T=2 wins.
  s[4, 1, 3] = 0.95  # Snapshot 1 has the highest b1 but is not confident (gap 0.01).
  s[4, 1, 0] = 0.94
  s[5, 2, 0] = 0.4  # b1 exactly at threshold -> not confident (strict >).
  s[6, 0, 3] = 0.5  # Confident at snapshot 0; other snapshots unmatched but still paired.
  res = jax.tree.map(np.asarray, jax.jit(match.confident_matches)(s))
  np.testing.assert_array_equal(res.matched, [False, True, False, False, True, False, True])
  np.testing.assert_array_equal(res.target, [-1, 3, -1, -1, 2, -1, 3])
  np.testing.assert_array_equal(res.conflict, [False, False, False, False, True, False, False])
  np.testing.assert_array_equal(res.num_confident, [0, 1, 0, 0, 2, 0, 1])
  np.testing.assert_array_equal(res.snapshot[[1, 4, 6]], [1, 2, 0])
  np.testing.assert_allclose(res.best[[1, 4, 6]], [0.45, 0.8, 0.5], rtol=1e-6)
  np.testing.assert_allclose(res.margin[[1, 4, 6]], [0.05, 0.7, 0.4], rtol=1e-5)
  # Unmatched candidates report their overall best snapshot.
  assert int(res.snapshot[2]) == 0 and float(res.best[2]) == pytest.approx(0.6)
  np.testing.assert_allclose(res.margin[3], 0.0)
  # A larger gap (traced) turns candidate 1 off.
  res_gap = match.confident_matches(s, threshold=0.4, gap=jnp.float32(0.06))
  assert not bool(res_gap.matched[1])


def test_confident_matches_random_vs_reference_and_batch_axes():
  rng = np.random.default_rng(3)
  s = rng.uniform(0.2, 0.7, size=(2, 6, 4, 9)).astype(np.float32)
  res = match.confident_matches(s)
  assert res.matched.shape == (2, 6)
  for i in range(2):
    for j in range(6):
      matched, target, conflict, count = _np_confident(s[i, j])
      assert bool(res.matched[i, j]) == matched
      assert int(res.target[i, j]) == target
      assert bool(res.conflict[i, j]) == conflict
      assert int(res.num_confident[i, j]) == count
  assert bool(res.conflict.any())  # The draw exercises conflicts.
  with pytest.raises(ValueError, match=r"\[..., S, T\]"):
    match.confident_matches(s[0, 0, 0])


# ----------------------------------------------------------------------------------------------
# Evaluation matching
# ----------------------------------------------------------------------------------------------


def _victim(rng, num_train=5, size=32):
  """Training images in [0, 1] with structure, their mean and mean-subtracted copies."""
  i = np.arange(size)[:, None, None]
  j = np.arange(size)[None, :, None]
  c = np.arange(3)[None, None, :]
  imgs = []
  for _ in range(num_train):
    fi, fj, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6, size=3)
    img = 0.5 + 0.3 * np.sin(2 * np.pi * fi * i / size + ph[c]) * np.cos(2 * np.pi * fj * j / size)
    imgs.append(np.clip(img + 0.05 * rng.normal(size=img.shape), 0, 1))
  train01 = np.array(imgs)
  mu = train01.mean(0)
  return train01, mu, train01 - mu


def _np_half_features(x):
  """Independent float64 reference of the pre-match features: 4-tap bicubic, CHW flatten."""
  n = x.shape[1]
  w = np.array([-0.09375, 0.59375, 0.59375, -0.09375])
  mat = np.zeros((n // 2, n))
  for o in range(n // 2):
    for k in range(4):
      mat[o, min(max(2 * o - 1 + k, 0), n - 1)] += w[k]
  half = np.einsum("oh,nhwc,pw->ncop", mat, x, mat)
  return half.reshape(x.shape[0], -1)


def _np_ncc(a, b):
  def std(z):
    z = z.reshape(z.shape[0], 3, -1)
    return ((z - z.mean(-1, keepdims=True)) / z.std(-1, ddof=1, keepdims=True)).reshape(
        z.shape[0], -1)
  za, zb = std(a), std(b)
  return ((za[:, None] - zb[None]) ** 2).sum(-1)


def _pool(rng, train_ms, copies_of, num_noise):
  """Noisy positively scaled copies of the given training images plus pure-noise distractors."""
  copies = [rng.uniform(0.3, 3.0) * (train_ms[t] + 0.05 * rng.normal(size=train_ms[t].shape))
            for t in copies_of]
  noise = [0.3 * rng.normal(size=train_ms[0].shape) for _ in range(num_noise)]
  pool = np.array(copies + noise)
  perm = rng.permutation(len(pool))
  return pool[perm], perm


def test_best_match_ncc_finds_noisy_copies_and_matches_reference():
  rng = np.random.default_rng(4)
  train01, mu, train_ms = _victim(rng)
  pool, perm = _pool(rng, train_ms, copies_of=[0, 1, 2, 3, 4], num_noise=6)
  where = np.argsort(perm)  # where[k] = pool position of original item k.
  with jax.enable_x64(True):
    res = match.best_match_per_train(pool, train_ms, mu, chunk_size=4)
    post = np.asarray(match.postprocess_rscale(pool, mu)[0])
    ssim_direct = np.asarray(metrics.ssim(post[where[:5]], train01))
    haar_direct = np.asarray(metrics.haarpsi(post[where[:5]], train01))
  np.testing.assert_array_equal(res.best_ssim_index, where[:5])
  np.testing.assert_array_equal(res.best_haarpsi_index, where[:5])
  # Pre-match equals an independent float64 NCC argmin on 4-tap-downsampled features.
  d = _np_ncc(_np_half_features(pool), _np_half_features(train_ms))
  np.testing.assert_array_equal(res.best_ssim_index, d.argmin(axis=0))
  np.testing.assert_allclose(res.best_ssim, ssim_direct, atol=1e-12)
  np.testing.assert_allclose(res.best_haarpsi, haar_direct, atol=1e-12)
  assert (np.asarray(res.best_ssim) > 0.8).all()


def test_best_match_assignment_directions_and_restored_input():
  rng = np.random.default_rng(5)
  train01, mu, train_ms = _victim(rng)
  # No copy of training image 0; two copies of image 2.
  pool, perm = _pool(rng, train_ms, copies_of=[1, 2, 2, 3, 4], num_noise=0)
  d = _np_ncc(_np_half_features(pool), _np_half_features(train_ms))
  with jax.enable_x64(True):
    t2c = match.best_match_per_train(pool, train_ms, mu, chunk_size=3)
    c2t = match.best_match_per_train(pool, train_ms, mu, assignment="candidate_to_train",
                                     chunk_size=3)
    restored = np.asarray(match.postprocess(pool, mu))
    res_restored = match.best_match_per_train(restored, train_ms, mu, restored=True,
                                              chunk_size=3)
  np.testing.assert_array_equal(t2c.best_ssim_index, d.argmin(axis=0))
  assert int(t2c.best_ssim_index[0]) >= 0  # Train -> candidate always finds one.
  # Candidate -> train: image 0 is nobody's nearest, so it gets no match.
  nearest = d.argmin(axis=1)
  assert 0 not in nearest
  assert int(c2t.best_ssim_index[0]) == -1 and int(c2t.best_haarpsi_index[0]) == -1
  assert float(c2t.best_ssim[0]) == -np.inf and float(c2t.best_haarpsi[0]) == -np.inf
  for t in range(1, 5):
    mine = np.where(nearest == t)[0]
    assert int(c2t.best_ssim_index[t]) == mine[d[mine, t].argmin()]
  np.testing.assert_allclose(c2t.best_ssim[1:], t2c.best_ssim[1:], atol=1e-12)
  # Restored inputs (already in [0, 1]): same pre-match, scored without post-processing.
  np.testing.assert_array_equal(res_restored.best_ssim_index, t2c.best_ssim_index)
  np.testing.assert_allclose(res_restored.best_ssim, t2c.best_ssim, atol=1e-12)
  np.testing.assert_allclose(res_restored.best_haarpsi, t2c.best_haarpsi, atol=1e-12)


def test_best_match_exact_mode_equals_brute_force():
  rng = np.random.default_rng(6)
  train01, mu, train_ms = _victim(rng, num_train=3)
  pool, _ = _pool(rng, train_ms, copies_of=[0, 2], num_noise=5)
  pool = pool.astype(np.float32)
  res = match.best_match_per_train(pool, train_ms.astype(np.float32), mu.astype(np.float32),
                                   mode="exact", chunk_size=3, pair_chunk_size=2)
  post = np.asarray(match.postprocess_rscale(pool, mu.astype(np.float32))[0])
  ref = train01.astype(np.float32)
  shape = (post.shape[0], ref.shape[0]) + ref.shape[1:]
  pairs = (np.broadcast_to(post[:, None], shape), np.broadcast_to(ref[None], shape))
  s = np.asarray(metrics.ssim(*pairs))  # All pairs through the per-pair API.
  h = np.asarray(metrics.haarpsi(*pairs))
  np.testing.assert_array_equal(res.best_ssim_index, s.argmax(axis=0))
  np.testing.assert_array_equal(res.best_haarpsi_index, h.argmax(axis=0))
  np.testing.assert_allclose(res.best_ssim, s.max(axis=0), atol=2e-6)
  np.testing.assert_allclose(res.best_haarpsi, h.max(axis=0), atol=2e-6)


def test_best_match_rejects_bad_options():
  rng = np.random.default_rng(7)
  _, mu, train_ms = _victim(rng, num_train=2)
  with pytest.raises(ValueError, match="ncc"):
    match.best_match_per_train(train_ms, train_ms, mu, mode="fast")
  with pytest.raises(ValueError, match="train_to_candidate"):
    match.best_match_per_train(train_ms, train_ms, mu, assignment="both")
  with pytest.raises(ValueError, match="HWC"):
    match.best_match_per_train(train_ms.transpose(0, 3, 1, 2), train_ms, mu)
