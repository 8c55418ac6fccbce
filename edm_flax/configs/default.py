"""Config of the conditional EDM (DDPM++) restorer.

`get_config("cifar")` (the default) is EDM's `cifar10 --arch=ddpmpp` network and train.py
defaults with the paper's 6 input channels; `get_config("tiny")` is a few-thousand-parameter
variant for CPU tests and smoke runs. Override fields on the command line, e.g.
`--config.training.batch_size=513 --config.network.dtype=float64`.

`training.dropout` and `network.dropout` are one shared field: setting either sets both.

References:
  NVlabs/edm@62072d2, `train.py` and `training/training_loop.py`; SPEC.md §7.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for variant `arg` ("cifar" or "tiny"; None means "cifar")."""
  variant = arg or "cifar"
  if variant not in ("cifar", "tiny"):
    raise ValueError(f"get_config: unknown variant {arg!r}; expected 'cifar' or 'tiny'.")
  config = ml_collections.ConfigDict()
  config.variant = variant
  dropout = ml_collections.FieldReference(0.13)

  # SongUNet (DDPM++) fields: edm_flax.networks.SongUNet(**config.network).
  config.network = ml_collections.ConfigDict(dict(
      img_resolution=32,
      in_channels=6,  # 3 noisy target + 3 condition
      out_channels=3,
      label_dim=0,
      augment_dim=9,
      model_channels=128,
      channel_mult=(2, 2, 2),
      channel_mult_emb=4,
      num_blocks=4,
      attn_resolutions=(16,),
      dropout=dropout,
      resample_filter=(1, 1),
      dtype="float32",  # "float64" reproduces the paper's double-precision run (needs x64)
  ))

  # EDMPrecond fields.
  config.precond = ml_collections.ConfigDict(dict(
      sigma_data=0.5,
      img_channels=3,
      scale_condition=True,  # c_in multiplies the condition too (paper: EDMPrecond unchanged)
  ))

  # EDMLoss: ln σ ~ N(P_mean, P_std²).
  config.loss = ml_collections.ConfigDict(dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5))

  # edm_sampler, deterministic Heun with 35 network evaluations.
  config.sampler = ml_collections.ConfigDict(dict(
      num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
      S_churn=0.0, S_min=0.0, S_max=float("inf"), S_noise=1.0,
  ))

  # Restoration: ×1 is one sample, ×20 the mean of 20 samples with different latents.
  config.restore = ml_collections.ConfigDict(dict(num_samples=20, seed=0))

  # Training (EDM defaults; the paper used batch 513 in float64, see SPEC §7.5).
  config.training = ml_collections.ConfigDict(dict(
      seed=0,
      batch_size=512,
      total_img=200_000_000,  # 390,625 steps at B = 512
      lr=1e-3,
      lr_rampup_img=10_000_000,  # lr(k) = lr·min(B·k / lr_rampup_img, 1)
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      grad_nan_to_num=1e5,  # gradients pass through nan_to_num(0, ±1e5) before Adam
      ema_halflife_img=500_000,
      ema_rampup_ratio=0.05,
      dropout=dropout,
      matmul_precision="highest",  # EDM runs fp32 with TF32 off
      log_every_steps=100,
      ckpt_every_steps=5_000,
      max_to_keep=3,
  ))

  if variant == "tiny":
    config.network.model_channels = 16
    config.network.channel_mult = (1, 2)
    config.network.num_blocks = 1
    config.network.attn_resolutions = (16,)
    config.sampler.num_steps = 4
    config.restore.num_samples = 2
    config.training.batch_size = 4
    config.training.total_img = 16
    config.training.lr_rampup_img = 8
    config.training.ema_halflife_img = 8
    config.training.log_every_steps = 1
    config.training.ckpt_every_steps = 2
  return config
