"""Tests of edm_flax/restore.py with analytic fake denoisers."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from edm_flax import restore as restore_lib

SIGMA_DATA = 0.5
# SPEC §7.6: for data ~ N(0, σ_d²I) and its exact denoiser, the 18-step sampler returns
# 0.5276246370·z.
GAUSSIAN_GAIN = 0.5276246370


def condition_denoiser(params, x, sigma, condition):
  """D = condition: the last Euler step returns D, so the sampler outputs the condition."""
  del params, sigma
  return condition + 0.0 * x


def gaussian_denoiser(params, x, sigma, condition):
  """Exact denoiser for data ~ N(condition, σ_d²I): c + (x − c)·σ_d²/(σ² + σ_d²)."""
  del params
  sigma = jnp.asarray(sigma, x.dtype)
  return condition + (x - condition) * SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)


def images(n, seed=0, size=8):
  return np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


def test_condition_denoiser_returns_condition_for_every_image_and_padding():
  cond = images(5)  # 5 images × 3 samples in batches of 4: the last batch is padded
  out = restore_lib.restore(condition_denoiser, {}, cond, jax.random.key(0), num_samples=3,
                            average=False, batch_size=4, num_steps=4)
  assert out['mean'].shape == cond.shape and out['mean'].dtype == np.float32
  assert out['spread'].shape == (5,)
  assert out['samples'].shape == (5, 3) + cond.shape[1:]
  np.testing.assert_allclose(out['mean'], cond, atol=1e-6)
  np.testing.assert_allclose(out['samples'], np.broadcast_to(cond[:, None], (5, 3, 8, 8, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(out['spread'], 0.0, atol=1e-6)


def test_output_is_clipped_to_unit_interval():
  cond = np.full((2, 8, 8, 3), 1.5, np.float32)  # condition 2 in [−1,1] space: clips to 1
  cond[1] = -0.5
  out = restore_lib.restore(condition_denoiser, {}, cond, jax.random.key(0), num_steps=4)
  np.testing.assert_array_equal(out['mean'][0], 1.0)
  np.testing.assert_array_equal(out['mean'][1], 0.0)


def test_results_do_not_depend_on_batching_or_padding():
  cond = images(5, seed=1)
  key = jax.random.key(3)
  runs = [restore_lib.restore(gaussian_denoiser, {}, cond, key, num_samples=3, average=False,
                              batch_size=b) for b in (4, 7, 64)]
  for other in runs[1:]:
    for k in ('mean', 'spread', 'samples'):
      np.testing.assert_allclose(other[k], runs[0][k], atol=1e-6, err_msg=k)
  # ×1 is sample 0 of the ×3 run, and its spread is exactly 0.
  single = restore_lib.restore(gaussian_denoiser, {}, cond, key, num_samples=1, batch_size=4)
  np.testing.assert_allclose(single['mean'], runs[0]['samples'][:, 0], atol=1e-6)
  np.testing.assert_array_equal(single['spread'], 0.0)
  # The mean is the average of the samples, the spread their RMS standard deviation.
  samples = runs[0]['samples'].astype(np.float64)
  np.testing.assert_allclose(runs[0]['mean'], samples.mean(1), atol=1e-6)
  spread_ref = np.sqrt(samples.var(axis=1).reshape(5, -1).mean(1))
  np.testing.assert_allclose(runs[0]['spread'], spread_ref, rtol=1e-5, atol=1e-7)


def test_gaussian_denoiser_spread_matches_the_sampler_anchor():
  # Condition 0.5 is c = 0, so each sample is clip((0.5276246·z + 1)/2, 0, 1) with z ~ N(0, 1).
  num_samples = 8
  cond = np.full((2, 32, 32, 3), 0.5, np.float32)
  out = restore_lib.restore(gaussian_denoiser, {}, cond, jax.random.key(11),
                            num_samples=num_samples, batch_size=16)
  z = np.linspace(-12.0, 12.0, 200_001)
  pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi) * (z[1] - z[0])
  f = np.clip((GAUSSIAN_GAIN * z + 1.0) / 2.0, 0.0, 1.0)
  var = np.sum(pdf * f**2) - np.sum(pdf * f)**2
  expected = np.sqrt(var * (num_samples - 1) / num_samples)  # ddof = 0 over the samples
  np.testing.assert_allclose(out['spread'], expected, rtol=0.03)
  assert abs(out['mean'].mean() - 0.5) < 0.01
  # Different images get different latents.
  assert np.abs(out['mean'][0] - out['mean'][1]).max() > 0.05


def test_load_images_from_png_folder_and_npz(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  (tmp_path / 'pngs').mkdir()
  for i, name in enumerate(['b', 'a', 'c']):
    Image.fromarray(x[i]).save(tmp_path / 'pngs' / f'{name}.png')
  images, names = restore_lib.load_images(str(tmp_path / 'pngs'), 32)
  assert names == ['a', 'b', 'c']
  np.testing.assert_allclose(images, x[[1, 0, 2]] / 255.0, atol=1e-7)
  np.savez(tmp_path / 'x.npz', other=x[:1], images=x / 255.0)
  images, names = restore_lib.load_images(str(tmp_path / 'x.npz'))
  assert names == ['00000', '00001', '00002']
  np.testing.assert_allclose(images, x / 255.0, atol=1e-7)


def test_load_images_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    restore_lib.load_images(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no .png'):
    restore_lib.load_images(str(tmp_path / 'empty'))
  np.savez(tmp_path / 'nchw.npz', np.zeros((2, 3, 32, 32), np.float32))
  with pytest.raises(ValueError, match='NHWC'):
    restore_lib.load_images(str(tmp_path / 'nchw.npz'))
  np.savez(tmp_path / 'small.npz', images=np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match='32x32'):
    restore_lib.load_images(str(tmp_path / 'small.npz'), 32)


@pytest.mark.parametrize('kwargs, match', [
    (dict(condition=np.zeros((4, 8, 8))), 'condition must be'),
    (dict(num_samples=0), 'num_samples'),
    (dict(batch_size=0), 'batch_size'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
  args = dict(condition=images(2), num_samples=1, batch_size=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    restore_lib.restore(condition_denoiser, {}, args.pop('condition'), jax.random.key(0), **args)
