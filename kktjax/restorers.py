"""Restoration methods for the evaluation, and the bridge from pair datasets to edm_flax.

`edm_flax` never imports kktjax; this module wires kktjax's pair stream into edm_flax's
trainers and wraps trained restorers as `images [N,32,32,3] in [0,1] -> restored` functions.

Methods (SPEC §9): "plain" (identity), "dncnn" (BF-DnCNN), "diffusion_x1" (one EDM sample),
"diffusion_x20" (the mean of `num_samples_avg` samples; the paper's ×20).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from kktjax import generate
from kktjax import records
from kktjax import stream

METHODS = ("plain", "dncnn", "diffusion_x1", "diffusion_x20")


class Unavailable(Exception):
  """A method cannot run (no trained weights given); the report says why."""


def pair_source(path: str) -> records.PairDataSource:
  """Pairs of a generation workdir (all hosts' folders) or of one pair folder."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"pair dataset {path!r} does not exist")
  if generate.dataset_dirs(path):
    return generate.open_dataset(path)
  return records.PairDataSource(path)


@functools.lru_cache(maxsize=4)
def _diffusion(workdir: str):
  from edm_flax import restore
  from edm_flax import train
  config = train.load_config(workdir)
  params = train.load_ema_params(workdir, config)
  return config, params, restore.make_denoise_apply(train.create_model(config))


@functools.lru_cache(maxsize=4)
def _dncnn(workdir: str):
  from edm_flax import train
  from edm_flax import train_dncnn
  config = train.load_config(workdir)
  params, batch_stats = train_dncnn.load_dncnn(workdir, config)
  model = train_dncnn.create_model(config)
  fn = jax.jit(lambda x: jnp.clip(train_dncnn.denoise(model, params, batch_stats, x), 0, 1))
  return fn


def _batched(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Applies a jitted per-batch fn with a fixed (padded) batch shape: one compilation."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(fn(jnp.asarray(chunk, jnp.float32)))[:n])
  return np.concatenate(out) if out else images


def build(name: str, config):
  """The restorer `fn(images, key) -> restored` of a method, per an evaluation config.

  Raises:
    Unavailable: the method needs weights that the config does not point to.
    ValueError: an unknown method.
  """
  if name == "plain":
    return lambda images, key: images
  if name == "dncnn":
    if not config.dncnn_workdir:
      raise Unavailable("no BF-DnCNN weights (set config.dncnn_workdir)")
    fn = _dncnn(os.path.abspath(config.dncnn_workdir))
    return lambda images, key: _batched(fn, images, config.restore_batch_size)
  if name in ("diffusion_x1", "diffusion_x20"):
    if not config.restorer_workdir:
      raise Unavailable("no diffusion restorer weights (set config.restorer_workdir)")
    from edm_flax import restore
    rconfig, params, denoise_apply = _diffusion(os.path.abspath(config.restorer_workdir))
    num_samples = 1 if name == "diffusion_x1" else int(config.num_samples_avg)
    sampler = {**dict(rconfig.sampler), "num_steps": int(config.sampler_steps)}

    def fn(images, key):
      return restore.restore(denoise_apply, params, images, key, num_samples=num_samples,
                             batch_size=config.restore_batch_size, **sampler)["mean"]
    return fn
  raise ValueError(f"unknown restoration method {name!r}; expected one of {METHODS}")


def train_tiny(dataset_workdir: str, restorer_workdir: str, dncnn_workdir: str, *,
               restorer_steps: int = 300, dncnn_steps: int = 200, batch_size: int = 32,
               progress: bool = True) -> None:
  """Trains a tiny conditional EDM and a tiny BF-DnCNN on a pair dataset (demo scale).

  Both resume from their workdirs. The learning-rate and EMA ramps are shortened to the run's
  length (EDM's are sized for 200 Mimg).
  """
  from edm_flax import train
  from edm_flax import train_dncnn
  from edm_flax.configs import default as edm_config
  from edm_flax.configs import dncnn as dncnn_config
  source = pair_source(dataset_workdir)
  config = edm_config.get_config("tiny")
  config.network.model_channels = 32
  config.training.batch_size = batch_size
  config.training.total_img = restorer_steps * batch_size
  config.training.lr_rampup_img = 20 * batch_size
  config.training.ema_halflife_img = 10 * batch_size
  config.training.log_every_steps = 25
  config.training.ckpt_every_steps = 100
  data = stream.make_train_stream(source, batch_size, config.training.seed, 0.1)
  train.train_and_evaluate(config, restorer_workdir, data, progress=progress)
  dconfig = dncnn_config.get_config("tiny")
  dconfig.network.features, dconfig.network.depth = 16, 8
  dconfig.training.batch_size = batch_size
  dconfig.training.total_steps = dncnn_steps
  dconfig.training.lr_halving_steps = tuple(int(dncnn_steps * f) for f in (0.625, 0.75, 0.875))
  dconfig.training.log_every_steps = 25
  dconfig.training.ckpt_every_steps = 100
  data = stream.make_train_stream(source, batch_size, dconfig.training.seed, 0.1)
  train_dncnn.train(dconfig, dncnn_workdir, data, progress=progress)
