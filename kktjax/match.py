"""Post-processing of reconstructions, confident matching, and evaluation matching (SPEC §4).

Layout: images are HWC, [..., H, W, C]. Candidates (KKT reconstructions x) and training images
live in the victim's mean-subtracted space unless said otherwise; mu is the victim's mean image
[H, W, C]. Scores compare a post-processed candidate in [0, 1] with the clean training image
train + mu in [0, 1].

References:
  Haim et al., "Reconstructing training data from trained neural networks", NeurIPS 2022
    (nivha/dataset_reconstruction: min-max stretch, NCC pre-match at half resolution).
  The reference paper, "Image restoration for training data reconstructed from trained neural
    networks" (r* post-processing, confident match rule, candidate -> train assignment).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kktjax import metrics

POSTPROCESS_MODES = ("rscale", "minmax")
ASSIGNMENTS = ("train_to_candidate", "candidate_to_train")
MATCH_MODES = ("ncc", "exact")

# ---------------------------------------------------------------------------------------------
# Post-processing (SPEC §4.1)
# ---------------------------------------------------------------------------------------------


def _check_x_mu(x, mu) -> None:
  if np.ndim(x) < 3:
    raise ValueError(f"x must be HWC images [..., H, W, C]; got shape {np.shape(x)}.")
  if np.ndim(mu) < 3:
    raise ValueError(f"mu must be an HWC image [H, W, C]; got shape {np.shape(mu)}.")
  try:
    out = np.broadcast_shapes(np.shape(x), np.shape(mu))
  except ValueError:
    out = None
  if out != tuple(np.shape(x)):
    raise ValueError(f"mu of shape {np.shape(mu)} does not broadcast to x of shape "
                     f"{np.shape(x)} (both HWC).")


def postprocess_rscale(x: jax.Array, mu: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scales a mean-subtracted candidate by the largest r >= 0 keeping r x + mu in [0, 1].

  r* = min over entries of {(1 - mu)/x where x > 0; -mu/x where x < 0}, entries with x = 0
  skipped, with mu clipped to [0, 1] first (augmentation can overshoot) and r* >= 0. The output
  r* x + mu is invariant to positive rescaling of x. An all-zero x gives r* = 0 (output mu).

  Args:
    x: mean-subtracted candidates [..., H, W, C].
    mu: the victim's mean image, [H, W, C] or anything broadcasting to x.

  Returns:
    (image [..., H, W, C] in [0, 1], r [...]).
  """
  _check_x_mu(x, mu)
  return _postprocess_rscale(jnp.asarray(x), jnp.asarray(mu))


def _postprocess_rscale(x, mu):
  mu = jnp.clip(mu, 0.0, 1.0).astype(x.dtype)
  safe_x = jnp.where(x == 0, 1.0, x)
  ratio = jnp.where(x > 0, (1.0 - mu) / safe_x, -mu / safe_x)
  ratio = jnp.where(x == 0, jnp.inf, ratio)
  r = jnp.min(ratio, axis=(-3, -2, -1))
  r = jnp.where(jnp.isfinite(r), jnp.maximum(r, 0.0), 0.0)
  # The clip only removes rounding overshoot (|excess| ~ 1 ulp).
  image = jnp.clip(r[..., None, None, None] * x + mu, 0.0, 1.0)
  return image, r


def postprocess_minmax(x: jax.Array, mu: jax.Array) -> jax.Array:
  """Haim's per-image min-max stretch of x + mu over all pixels and channels to [0, 1].

  Args:
    x: mean-subtracted candidates [..., H, W, C].
    mu: the victim's mean image, broadcasting to x (not clipped, as in Haim's code).

  Returns:
    images [..., H, W, C] in [0, 1]; a constant x + mu maps to zeros.
  """
  _check_x_mu(x, mu)
  return _postprocess_minmax(jnp.asarray(x), jnp.asarray(mu))


def _postprocess_minmax(x, mu):
  v = x + mu.astype(x.dtype)
  vmin = jnp.min(v, axis=(-3, -2, -1), keepdims=True)
  vmax = jnp.max(v, axis=(-3, -2, -1), keepdims=True)
  span = vmax - vmin
  return jnp.where(span > 0, (v - vmin) / jnp.where(span > 0, span, 1.0), 0.0)


def _check_postprocess_mode(mode: str) -> None:
  if mode not in POSTPROCESS_MODES:
    raise ValueError(f"Unknown post-processing mode {mode!r}; valid modes: {POSTPROCESS_MODES}.")


def postprocess(x: jax.Array, mu: jax.Array, mode: str = "rscale") -> jax.Array:
  """Post-processes mean-subtracted candidates to images in [0, 1].

  Args:
    x: mean-subtracted candidates [..., H, W, C].
    mu: the victim's mean image, broadcasting to x.
    mode: "rscale" (paper default, `postprocess_rscale`) or "minmax" (Haim's option).

  Returns:
    images [..., H, W, C] in [0, 1] (without r; call `postprocess_rscale` for it).
  """
  _check_postprocess_mode(mode)
  _check_x_mu(x, mu)
  return _postprocess(jnp.asarray(x), jnp.asarray(mu), mode)


def _postprocess(x, mu, mode):
  if mode == "rscale":
    return _postprocess_rscale(x, mu)[0]
  return _postprocess_minmax(x, mu)


# ---------------------------------------------------------------------------------------------
# Confident match (SPEC §4.3, data generation)
# ---------------------------------------------------------------------------------------------

# A margin equal to `gap` up to float32 rounding of the SSIMs counts as confident (b1-b2 >= gap).
_GAP_TOLERANCE = 1e-6


class ConfidentMatch(NamedTuple):
  """Per-candidate result of `confident_matches` (all fields have the batch shape [...]).

  matched: some snapshot is confident (b1 > threshold and b1 - b2 >= gap).
  target: the matched training image, or -1 when not matched.
  snapshot: the chosen snapshot: the confident one with the highest b1 when matched, else the
    snapshot with the highest b1.
  best: b1 at the chosen snapshot.
  margin: b1 - b2 at the chosen snapshot (inf when T = 1).
  conflict: confident snapshots point to two or more different training images.
  num_confident: number of confident snapshots.
  """
  matched: jax.Array
  target: jax.Array
  snapshot: jax.Array
  best: jax.Array
  margin: jax.Array
  conflict: jax.Array
  num_confident: jax.Array


def confident_matches(ssim_scores: jax.Array, threshold: float = 0.4,
                      gap: float = 0.05) -> ConfidentMatch:
  """The paper's confident-match rule over the snapshots of each candidate.

  Snapshot s is confident for T = argmax_t ssim[s, t] iff b1 > threshold and b1 - b2 >= gap,
  where b1, b2 are the best and second-best scores over training images. A candidate is matched
  if any snapshot is confident; then all its snapshots are paired with T. When confident
  snapshots disagree (a conflict), T is that of the confident snapshot with the highest b1 (ties:
  the earliest snapshot); count `conflict` in the run statistics.

  Args:
    ssim_scores: [..., S, T] SSIM of each snapshot of each candidate against each training image
      (post-processed snapshots, training images in [0, 1]).
    threshold: b1 must exceed it (float or traced scalar).
    gap: b1 - b2 must be at least this (float or traced scalar).

  Returns:
    A `ConfidentMatch` with fields of shape [...].

  References:
    The reference paper §3 (data generation); SPEC §4.3.
  """
  if np.ndim(ssim_scores) < 2 or 0 in np.shape(ssim_scores)[-2:]:
    raise ValueError(f"ssim_scores must be [..., S, T] with S, T >= 1; got shape "
                     f"{np.shape(ssim_scores)}.")
  return _confident_matches(jnp.asarray(ssim_scores), threshold, gap)


@jax.jit
def _confident_matches(scores, threshold, gap):
  if scores.shape[-1] >= 2:
    top2, top_idx = jax.lax.top_k(scores, 2)
    b1, b2 = top2[..., 0], top2[..., 1]
  else:
    top_idx = jnp.zeros(scores.shape[:-1] + (1,), jnp.int32)
    b1 = scores[..., 0]
    b2 = jnp.full_like(b1, -jnp.inf)
  target_s = top_idx[..., 0].astype(jnp.int32)  # [..., S]
  margin_s = b1 - b2
  confident = (b1 > threshold) & (margin_s >= gap - _GAP_TOLERANCE)
  matched = jnp.any(confident, axis=-1)
  # Choose the confident snapshot with the highest b1; fall back to the overall highest b1.
  key = jnp.where(confident | ~matched[..., None], b1, -jnp.inf)
  snapshot = jnp.argmax(key, axis=-1).astype(jnp.int32)
  take = lambda v: jnp.take_along_axis(v, snapshot[..., None], axis=-1)[..., 0]
  chosen_target = take(target_s)
  conflict = jnp.any(confident & (target_s != chosen_target[..., None]), axis=-1)
  return ConfidentMatch(
      matched=matched,
      target=jnp.where(matched, chosen_target, -1),
      snapshot=snapshot,
      best=take(b1),
      margin=take(margin_s),
      conflict=conflict,
      num_confident=jnp.sum(confident, axis=-1, dtype=jnp.int32),
  )


# ---------------------------------------------------------------------------------------------
# Evaluation matching (SPEC §4.4)
# ---------------------------------------------------------------------------------------------


class BestMatch(NamedTuple):
  """Per training image: best SSIM / HaarPSI and the candidate index that achieved it.

  A training image without a match (only possible with assignment="candidate_to_train") has
  score -inf and index -1. In "ncc" mode both indices are the NCC pre-match.
  """
  best_ssim: jax.Array
  best_ssim_index: jax.Array
  best_haarpsi: jax.Array
  best_haarpsi_index: jax.Array


def _to_chw_flat(x):
  """[N, H, W, C] -> [N, C*H*W] (the layout of `metrics.ncc_distance_matrix`)."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _ncc_features(x_mean_sub):
  """Half-resolution, flattened CHW features for the NCC pre-match (Haim)."""
  half = metrics.pytorch_bicubic_downsample2(x_mean_sub, axes=(-3, -2))
  return _to_chw_flat(half)


def _candidate_images(cand, mu, restored, postprocess_mode):
  """(mean-subtracted candidates for NCC, [0, 1] images for scoring)."""
  if restored:
    return cand - mu, cand
  return cand, _postprocess(cand, mu, postprocess_mode)


@functools.partial(jax.jit, static_argnames=("assignment", "restored", "postprocess_mode"))
def _ncc_step(carry, cand, valid, offset, train_feat, mu, *, assignment, restored,
              postprocess_mode):
  """Updates the running (min NCC distance, argmin) per training image with one chunk."""
  best_d, best_i = carry
  cand_ms, _ = _candidate_images(cand, mu, restored, postprocess_mode)
  d = metrics._ncc_distance_matrix(_ncc_features(cand_ms), train_feat, mu.shape[-1])  # [chunk, T]
  d = jnp.where(valid[:, None], d, jnp.inf)
  if assignment == "candidate_to_train":
    nearest = jnp.argmin(d, axis=1)  # Each candidate votes only for its nearest train image.
    d = jnp.where(jnp.arange(d.shape[1])[None, :] == nearest[:, None], d, jnp.inf)
  chunk_i = jnp.argmin(d, axis=0).astype(jnp.int32)
  chunk_d = jnp.min(d, axis=0)
  better = chunk_d < best_d  # Strict: ties keep the earliest candidate.
  return (jnp.where(better, chunk_d, best_d), jnp.where(better, chunk_i + offset, best_i))


@functools.partial(jax.jit, static_argnames=("restored", "postprocess_mode", "ssim_variant",
                                             "haarpsi_subsample", "pair_chunk_size"))
def _exact_step(carry, cand, valid, offset, train_img, mu, *, restored, postprocess_mode,
                ssim_variant, haarpsi_subsample, pair_chunk_size):
  """Updates running best SSIM / HaarPSI (and argmax) per training image with one chunk."""
  best_s, idx_s, best_h, idx_h = carry
  _, img = _candidate_images(cand, mu, restored, postprocess_mode)
  s = metrics._ssim_matrix(img, train_img, ssim_variant, pair_chunk_size)
  h = metrics._haarpsi_matrix(img, train_img, haarpsi_subsample, pair_chunk_size)

  def update(score, best, idx):
    score = jnp.where(valid[:, None] & ~jnp.isnan(score), score, -jnp.inf)
    chunk_best = jnp.max(score, axis=0)
    chunk_idx = jnp.argmax(score, axis=0).astype(jnp.int32) + offset
    better = chunk_best > best
    return jnp.where(better, chunk_best, best), jnp.where(better, chunk_idx, idx)

  best_s, idx_s = update(s, best_s, idx_s)
  best_h, idx_h = update(h, best_h, idx_h)
  return best_s, idx_s, best_h, idx_h


@functools.partial(jax.jit, static_argnames=("restored", "postprocess_mode", "ssim_variant",
                                             "haarpsi_subsample"))
def _score_pairs(cand, index, train_img, mu, *, restored, postprocess_mode, ssim_variant,
                 haarpsi_subsample):
  _, img = _candidate_images(cand, mu, restored, postprocess_mode)
  s = metrics.ssim(img, train_img, ssim_variant)
  h = metrics._haarpsi(img, train_img, haarpsi_subsample)
  has = index >= 0
  return jnp.where(has, s, -jnp.inf), jnp.where(has, h, -jnp.inf)


def _chunks(n, chunk_size):
  for start in range(0, n, chunk_size):
    yield start, min(start + chunk_size, n)


def _padded_chunk(candidates, start, stop, chunk_size, dtype):
  """Candidates[start:stop] on device, zero-padded to chunk_size, with its validity mask."""
  chunk = jnp.asarray(candidates[start:stop], dtype)
  n = stop - start
  if n < chunk_size:
    chunk = jnp.concatenate([chunk, jnp.zeros((chunk_size - n,) + chunk.shape[1:], dtype)])
  return chunk, jnp.arange(chunk_size) < n


def best_match_per_train(candidates, train, mu, *, mode: str = "ncc",
                         assignment: str = "train_to_candidate", restored: bool = False,
                         postprocess_mode: str = "rscale", ssim_variant: str = "haim",
                         haarpsi_subsample: bool = True, chunk_size: int = 4096,
                         pair_chunk_size: int = 32) -> BestMatch:
  """For each training image, its best SSIM and best HaarPSI over a pool of candidates.

  "ncc" (default, Haim's approximate matching): candidates and training images are downsampled
  x1/2 with PyTorch-semantics bicubic in mean-subtracted space and compared with the NCC
  distance. With assignment "train_to_candidate" (default, Haim) each training image takes its
  nearest candidate (a candidate may serve several); with "candidate_to_train" (Haim's use_bb,
  the paper's footnote 4) each candidate is assigned to its nearest training image and each
  training image keeps the nearest of its candidates, or none (score -inf, index -1). Only that
  pair is scored: the post-processed candidate against train + mu, with SSIM and HaarPSI.
  "exact": every (candidate, training image) pair is scored and each metric picks its own best;
  `assignment` is ignored.

  Candidates are streamed from the host `chunk_size` at a time with running minima / maxima, so
  device memory is bounded for pools of 1M images (candidates may be a NumPy array or memmap).
  Every chunk is padded to `chunk_size`, so one compilation serves the whole pool.

  Args:
    candidates: [N, H, W, C] HWC candidates: mean-subtracted reconstructions, or, with
      `restored=True`, restored images in [0, 1] (mu is subtracted for the pre-match and they are
      scored without post-processing).
    train: [T, H, W, C] the victim's training images, mean-subtracted (train + mu in [0, 1]).
    mu: [H, W, C] the victim's mean image.
    mode: "ncc" or "exact".
    assignment: "train_to_candidate" or "candidate_to_train" (ncc mode only).
    restored: candidates are already images in [0, 1].
    postprocess_mode: "rscale" or "minmax" (see `postprocess`); ignored when restored.
    ssim_variant: "haim" or "wang" (see `metrics.ssim`).
    haarpsi_subsample: HaarPSI's 2x2 subsampling (see `metrics.haarpsi`).
    chunk_size: candidates per device chunk.
    pair_chunk_size: in exact mode, candidates scored against all T at once inside a chunk;
      peak memory is about 8 * pair_chunk_size * T * H * W * C floats.

  Returns:
    `BestMatch` with fields of shape [T] (float scores, int32 candidate indices).

  References:
    Haim et al. 2022, `evaluations.get_evaluation_score_dssim`; SPEC §4.4.
  """
  if mode not in MATCH_MODES:
    raise ValueError(f"Unknown matching mode {mode!r}; valid modes: {MATCH_MODES}.")
  if assignment not in ASSIGNMENTS:
    raise ValueError(f"Unknown assignment {assignment!r}; valid assignments: {ASSIGNMENTS}.")
  _check_postprocess_mode(postprocess_mode)
  if np.ndim(candidates) != 4 or np.ndim(train) != 4 or np.ndim(mu) != 3:
    raise ValueError(f"Need candidates [N,H,W,C], train [T,H,W,C], mu [H,W,C]; got "
                     f"{np.shape(candidates)}, {np.shape(train)}, {np.shape(mu)}.")
  if not np.shape(candidates)[1:] == np.shape(train)[1:] == np.shape(mu):
    raise ValueError(f"candidates {np.shape(candidates)}, train {np.shape(train)} and mu "
                     f"{np.shape(mu)} must share H, W, C (HWC layout).")
  n, h, w, c = np.shape(candidates)
  if n == 0 or np.shape(train)[0] == 0:
    raise ValueError(f"Need at least one candidate and one training image; got N={n}, "
                     f"T={np.shape(train)[0]}.")
  if c not in (1, 3):
    raise ValueError(f"Images must have C = 1 or 3 channels (HaarPSI); got C = {c}.")
  if h % 2 or w % 2 or min(h, w) < 16:
    raise ValueError(f"Need even H, W >= 16 (x1/2 pre-match, HaarPSI); got {(h, w)}.")
  metrics._check_ssim_inputs(ssim_variant, (h, w))
  if int(chunk_size) < 1 or int(pair_chunk_size) < 1:
    raise ValueError(f"chunk sizes must be >= 1; got {chunk_size}, {pair_chunk_size}.")

  dtype = jnp.result_type(float)  # float32, or float64 under x64.
  chunk_size = min(int(chunk_size), n)
  train = jnp.asarray(train, dtype)
  mu = jnp.asarray(mu, dtype)
  train_img = jnp.clip(train + mu, 0.0, 1.0)
  num_train = train.shape[0]

  if mode == "exact":
    carry = (jnp.full((num_train,), -jnp.inf, dtype), jnp.full((num_train,), -1, jnp.int32),
             jnp.full((num_train,), -jnp.inf, dtype), jnp.full((num_train,), -1, jnp.int32))
    for start, stop in _chunks(n, chunk_size):
      chunk, valid = _padded_chunk(candidates, start, stop, chunk_size, dtype)
      carry = _exact_step(carry, chunk, valid, jnp.int32(start), train_img, mu,
                          restored=restored, postprocess_mode=postprocess_mode,
                          ssim_variant=ssim_variant, haarpsi_subsample=bool(haarpsi_subsample),
                          pair_chunk_size=min(int(pair_chunk_size), chunk_size))
    return BestMatch(*carry)

  train_feat = _ncc_features(train)
  carry = (jnp.full((num_train,), jnp.inf, dtype), jnp.full((num_train,), -1, jnp.int32))
  for start, stop in _chunks(n, chunk_size):
    chunk, valid = _padded_chunk(candidates, start, stop, chunk_size, dtype)
    carry = _ncc_step(carry, chunk, valid, jnp.int32(start), train_feat, mu,
                      assignment=assignment, restored=restored,
                      postprocess_mode=postprocess_mode)
  index = carry[1]
  # Gather the T pre-matched candidates (host side: candidates may be a host array).
  if isinstance(candidates, jax.Array):
    picked = jnp.asarray(candidates[jnp.maximum(index, 0)], dtype)
  else:
    picked = jnp.asarray(np.asarray(candidates)[np.maximum(np.asarray(index), 0)], dtype)
  s, hp = _score_pairs(picked, index, train_img, mu, restored=restored,
                       postprocess_mode=postprocess_mode, ssim_variant=ssim_variant,
                       haarpsi_subsample=bool(haarpsi_subsample))
  return BestMatch(best_ssim=s, best_ssim_index=index, best_haarpsi=hp, best_haarpsi_index=index)
