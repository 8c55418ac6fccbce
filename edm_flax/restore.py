"""Restoration of reconstructions with a trained conditional EDM restorer.

Every network call gets the same condition, the post-processed reconstruction scaled to [−1, 1],
and zero augmentation labels; the sampler is EDM's deterministic Heun sampler (35 evaluations by
default). The output (x + 1)/2 is clipped to [0, 1]. "×1" is one sample, "×20 averaged" the mean
of 20 samples with different latents; the spread of the samples is returned as a hallucination
score.

The latent of sample s of image i is drawn from fold_in(fold_in(key, i), s), so results do not
depend on the batch size or padding, and sample 0 of a ×20 run is the ×1 result.

References:
  Paper §3 (restoration, averaging); Karras et al., NeurIPS 2022, Algorithm 1;
  NVlabs/edm@62072d2, `generate.py`. SPEC.md §7.6.
"""
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image

from edm_flax import sampler as sampler_lib

DenoiseApply = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def make_denoise_apply(model: nn.Module) -> DenoiseApply:
  """`denoise_apply(params, x, sigma, condition) -> D` for an EDMPrecond, in eval mode.

  Augmentation labels are None, which equals zeros (map_augment has no bias).
  """
  def denoise_apply(params, x, sigma, condition):
    return model.apply({'params': params}, x, sigma, condition, None, train=False)
  return denoise_apply


@functools.partial(jax.jit, static_argnames=('denoise_apply', 'sampler_kwargs'))
def _restore_batch(params: Any, condition: jax.Array, image_ids: jax.Array,
                   sample_ids: jax.Array, key: jax.Array, *, denoise_apply: DenoiseApply,
                   sampler_kwargs: tuple[tuple[str, Any], ...]) -> jax.Array:
  """Samples one restoration per (image id, sample id) row; returns [b,H,W,C] in [0,1]."""
  cond = 2.0 * condition.astype(jnp.float32) - 1.0
  keys = jax.vmap(lambda i, s: jax.random.fold_in(jax.random.fold_in(key, i), s))(
      image_ids, sample_ids)
  latents = jax.vmap(lambda k: jax.random.normal(k, cond.shape[1:], jnp.float32))(keys)
  kwargs = dict(sampler_kwargs)
  if kwargs.get('S_churn', 0.0) > 0:  # churn noise: per batch, so it depends on the layout
    kwargs['key'] = jax.random.fold_in(jax.random.fold_in(key, 0x7FFFFFFF), image_ids[0])
  x = sampler_lib.edm_sampler(lambda x, sigma: denoise_apply(params, x, sigma, cond), latents,
                              **kwargs)
  return jnp.clip((x.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def restore(denoise_apply: DenoiseApply, params: Any, condition: np.ndarray, key: jax.Array,
            *, num_samples: int = 1, average: bool = True, batch_size: int = 512,
            mesh: Mesh | None = None, **sampler_kwargs) -> dict[str, np.ndarray]:
  """Restores reconstructions, averaging `num_samples` samples per image.

  The N·num_samples (image, sample) jobs are cut into batches of `batch_size` (the last one
  padded), each sampled by one jitted call, sharded over the devices of `mesh`.

  Args:
    denoise_apply: `denoise_apply(params, x, sigma, condition) -> D` with x and condition in
      [−1,1] (see `make_denoise_apply`); must be hashable (a module-level function or closure
      kept alive between calls avoids recompiling).
    params: the restorer's parameters (use the EMA parameters).
    condition: [N, H, W, C] post-processed reconstructions in [0, 1].
    key: PRNG key of the latents.
    num_samples: samples per image (1 = "×1", 20 = "×20 averaged").
    average: if False, all samples are returned too, under 'samples'.
    batch_size: jobs per device call (rounded up to a multiple of the device count).
    mesh: a 1-D mesh with axis 'data'; default all devices.
    **sampler_kwargs: passed to `edm_flax.sampler.edm_sampler` (num_steps, sigma_min, ...).

  Returns:
    dict with 'mean' float32 [N,H,W,C] in [0,1], the mean over samples of clip((x+1)/2, 0, 1);
    'spread' float32 [N], the per-image spread sqrt(mean over pixels of the variance across
    samples) (0 for one sample), a hallucination score; and, if not average, 'samples' float32
    [N, num_samples, H, W, C].
  """
  condition = np.asarray(condition)
  if condition.ndim != 4:
    raise ValueError(f'restore: condition must be [N,H,W,C] in [0,1], got shape '
                     f'{condition.shape}')
  if num_samples < 1:
    raise ValueError(f'restore: num_samples must be >= 1, got {num_samples}')
  if batch_size < 1:
    raise ValueError(f'restore: batch_size must be >= 1, got {batch_size}')
  if 'key' in sampler_kwargs or 'latents' in sampler_kwargs:
    raise ValueError('restore: pass the key as `key`; latents are drawn per image')
  n = condition.shape[0]
  out_shape = condition.shape[1:]
  result = {'mean': np.zeros((n,) + out_shape, np.float32), 'spread': np.zeros((n,), np.float32)}
  if not average:
    result['samples'] = np.zeros((n, num_samples) + out_shape, np.float32)
  if n == 0:
    return result

  mesh = mesh or Mesh(np.asarray(jax.devices()), ('data',))
  num_devices = mesh.devices.size
  jobs = n * num_samples
  batch = min(batch_size, jobs)
  batch = -(-batch // num_devices) * num_devices
  data = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)
  key = jax.device_put(key, replicated)
  kwargs = tuple(sorted(sampler_kwargs.items()))
  condition = condition.astype(np.float32)

  sums = np.zeros((n,) + out_shape, np.float64)
  sumsq = np.zeros((n,) + out_shape, np.float64)

  def collect(pending):
    out, img, smp, valid = pending
    out = np.asarray(out)[:valid].astype(np.float64)
    np.add.at(sums, img[:valid], out)
    np.add.at(sumsq, img[:valid], np.square(out))
    if not average:
      result['samples'][img[:valid], smp[:valid]] = out

  pending = None
  for start in range(0, jobs, batch):
    job = np.arange(start, start + batch)
    valid = min(batch, jobs - start)
    job[valid:] = job[0]  # padding rows repeat a real job; their outputs are dropped
    img, smp = (job // num_samples).astype(np.int32), (job % num_samples).astype(np.int32)
    out = _restore_batch(params, jax.device_put(condition[img], data),
                         jax.device_put(img, data), jax.device_put(smp, data), key,
                         denoise_apply=denoise_apply, sampler_kwargs=kwargs)
    if pending is not None:  # overlap the host work of one batch with the next device call
      collect(pending)
    pending = (out, img, smp, valid)
  collect(pending)

  mean = sums / num_samples
  var = np.maximum(sumsq / num_samples - np.square(mean), 0.0)
  result['mean'] = mean.astype(np.float32)
  result['spread'] = np.sqrt(var.reshape(n, -1).mean(axis=1)).astype(np.float32)
  if num_samples == 1:
    result['spread'][:] = 0.0
  return result


# ---------------------------------------------------------------------------------------------
# Files: a folder of PNGs or an .npz in, PNGs and a grid out (used by launch/restore.py).
# ---------------------------------------------------------------------------------------------


def load_images(path: str, image_size: int | None = None) -> tuple[np.ndarray, list[str]]:
  """Images in [0,1] from a folder of PNGs or an .npz file, with a name for each.

  Args:
    path: a directory of *.png files (sorted by name) or an .npz holding 'images' (else its
      first array), NHWC, uint8 in [0,255] or float in [0,1].
    image_size: if given, every image must be image_size × image_size.

  Returns:
    (float32 [N,H,W,3] in [0,1], names).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: no images, or wrong shapes.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'input {path} does not exist')
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.lower().endswith('.png'))
    if not files:
      raise ValueError(f'no .png files in {path}')
    arrays = [np.asarray(Image.open(os.path.join(path, f)).convert('RGB')) for f in files]
    if len({a.shape for a in arrays}) != 1:
      raise ValueError(f'the PNGs in {path} have different sizes')
    images, names = np.stack(arrays), [os.path.splitext(f)[0] for f in files]
  elif path.endswith('.npz'):
    with np.load(path) as data:
      if not data.files:
        raise ValueError(f'{path} holds no arrays')
      images = data['images'] if 'images' in data.files else data[data.files[0]]
    names = [f'{i:05d}' for i in range(len(images))]
  else:
    raise ValueError(f'input {path} is neither a directory of PNGs nor an .npz file')
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [N,H,W,3] (NHWC, RGB), got {images.shape} from {path}')
  if image_size is not None and images.shape[1:3] != (image_size, image_size):
    raise ValueError(f'images must be {image_size}x{image_size}, got '
                     f'{images.shape[1]}x{images.shape[2]} from {path}')
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  return np.clip(images.astype(np.float32), 0.0, 1.0), names


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[0,1] floats to uint8 with rounding."""
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(rows: list[np.ndarray], pad: int = 2, max_cols: int = 16) -> np.ndarray:
  """A uint8 grid: each entry of `rows` is a [N,H,W,3] row of images in [0,1].

  Rows longer than max_cols wrap; row groups are stacked in the given order, so the first
  row of every group is the input and the next ones its restorations.
  """
  n, h, w, _ = rows[0].shape
  groups = []
  for start in range(0, n, max_cols):
    cols = min(max_cols, n - start)
    for row in rows:
      tiles = np.ones((h + pad, cols * (w + pad), 3), np.float32)
      for j in range(cols):
        tiles[:h, j * (w + pad):j * (w + pad) + w] = row[start + j]
      groups.append(tiles)
  return to_uint8(np.concatenate(groups, axis=0))


def restore_files(workdir: str, input_path: str, output_dir: str, *, num_samples: int | None = None,
                  batch_size: int = 512, seed: int = 0, step: int | None = None,
                  **sampler_kwargs) -> dict[str, np.ndarray]:
  """Restores the images at `input_path` with the restorer checkpointed in `workdir`.

  Writes output_dir/<name>.png (the mean restoration), output_dir/grid.png (rows: input,
  restored) and output_dir/restored.npz ('mean', 'spread', 'names').

  Args:
    workdir: a restorer run directory (edm_flax.train); its latest (or `step`) checkpoint's EMA
      parameters and config are used.
    input_path: a folder of PNGs or an .npz (see `load_images`).
    output_dir: created if missing.
    num_samples: samples averaged per image; default the config's `restore.num_samples`.
    batch_size: jobs per device call.
    seed: seed of the latents.
    step: checkpoint step; default the latest.
    **sampler_kwargs: override the config's `sampler` settings.

  Returns:
    The `restore` result.
  """
  from edm_flax import train  # pylint: disable=g-import-not-at-top

  config = train.load_config(workdir, step)
  images, names = load_images(input_path, config.network.img_resolution)
  params = train.load_ema_params(workdir, config, step)
  kwargs = {**dict(config.sampler), **sampler_kwargs}
  num_samples = num_samples or config.restore.num_samples
  result = restore(make_denoise_apply(train.create_model(config)), params, images,
                   jax.random.key(seed), num_samples=num_samples, batch_size=batch_size,
                   **kwargs)
  os.makedirs(output_dir, exist_ok=True)
  for name, image in zip(names, to_uint8(result['mean'])):
    Image.fromarray(image).save(os.path.join(output_dir, f'{name}.png'))
  Image.fromarray(image_grid([images, result['mean']])).save(
      os.path.join(output_dir, 'grid.png'))
  np.savez(os.path.join(output_dir, 'restored.npz'), mean=result['mean'],
           spread=result['spread'], names=np.asarray(names))
  return result
