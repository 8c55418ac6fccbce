"""Config of the BF-DnCNN baseline restorer (SPEC §8).

`get_config()` is the paper's recipe: Adam lr 1e-3, batch 128, 40,000 batches, lr halved at
25k, 30k and 35k. `get_config("tiny")` is a small network for CPU tests and smoke runs.

References:
  Mohan et al., ICLR 2020 (LabForComputationalVision/bias_free_denoising@64930f0); paper §4.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the BF-DnCNN config for variant `arg` ("paper" (default) or "tiny")."""
  variant = arg or 'paper'
  if variant not in ('paper', 'tiny'):
    raise ValueError(f"get_config: unknown variant {arg!r}; expected 'paper' or 'tiny'.")
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.image_size = 32
  config.network = ml_collections.ConfigDict(dict(features=64, depth=20, channels=3))
  config.training = ml_collections.ConfigDict(dict(
      seed=0,
      batch_size=128,
      total_steps=40_000,
      lr=1e-3,
      lr_halving_steps=(25_000, 30_000, 35_000),
      log_every_steps=100,
      ckpt_every_steps=5_000,
      max_to_keep=3,
  ))
  if variant == 'tiny':
    config.network.features = 8
    config.network.depth = 4
    config.training.batch_size = 4
    config.training.total_steps = 4
    config.training.lr_halving_steps = (2, 3)
    config.training.log_every_steps = 1
    config.training.ckpt_every_steps = 2
  return config
