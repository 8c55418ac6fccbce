"""Configs for mass generation of the pair dataset (`kktjax.generate.run`), SPEC §5, §6.

Variants, chosen by the argument string:
  "paper" (default): the paper's data generation. Each run trains a 3072-1000-1000-1 victim on
    150 + 150 augmented CIFAR-10 training images (Adadelta, 50,000 epochs), attacks it with 400
    candidates for 11,900 iterations (11 snapshots), and keeps every snapshot of each confident
    candidate. Phase 1: 100,000 runs on uniform balanced sets; phase 2: 50,000 runs drawn from
    the 4,000 least-seen images.
  "tiny": a CPU-sized version that still produces real matches on real CIFAR-10 in minutes:
    width-100 victims on 20 + 20 images, 40 candidates, 11 snapshots on a doubling schedule.

Override fields on the command line, e.g. `--config.phase1_runs=1000`. Fields under "runtime
fields" may change between a job and its resume; all others are fixed once a workdir has
finished runs (a resume with other values is refused).
"""
from __future__ import annotations

import ml_collections

PAPER_SNAPSHOTS = (100, 200, 300, 500, 800, 1400, 2400, 4100, 7000, 10_000, 11_900)
TINY_SNAPSHOTS = (10, 20, 40, 80, 160, 240, 320, 400, 500, 600, 700)

# Fields that do not change what a run computes; a resumed job may set them differently.
RUNTIME_FIELDS = ("runs_per_device", "ssim_chunk", "data_dir", "cache_dir", "phase2_runs",
                  "progress")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the generation config for `arg` ("paper" or "tiny")."""
  variant = (arg or "paper").strip()
  if variant not in ("paper", "tiny"):
    raise ValueError(f"unknown generate config variant {arg!r}; expected 'paper' or 'tiny'")

  c = ml_collections.ConfigDict()
  c.seed = 0
  # Runs 0 … phase1_runs−1 are phase 1; the next phase2_runs ids are phase 2.
  c.phase1_runs = 100_000
  c.phase2_runs = 50_000
  c.phase2_pool = 4000          # phase 2 draws from this many least-seen images
  c.phase2_update_every = 256   # run ids per refresh of the per-image counts in phase 2
  c.n_per_class = 150           # per binary class (150 vehicles + 150 animals)

  # EDM's CIFAR-10 AugmentPipe settings (SPEC §5).
  c.augment = ml_collections.ConfigDict(dict(
      p=0.12, xflip=1e8, yflip=1.0, scale=1.0, rotate_frac=1.0, aniso=1.0, translate_frac=1.0))

  c.victim = ml_collections.ConfigDict()
  c.victim.width = 1000
  c.victim.first_layer_bias = False
  c.victim.init = "torch"
  c.victim.w1_std = 1e-4
  c.victim.recipe = "adadelta"
  c.victim.learning_rate = 1.0
  c.victim.epochs = 50_000
  c.victim.chunk_epochs = 5000   # epochs per jitted scan
  c.victim.dtype = "float32"

  # The "generate" recipe of SPEC §3.3: one Adadelta(1.0) over (x, λ), no abort.
  c.attack = ml_collections.ConfigDict()
  c.attack.m = 200               # candidates per class (N = 400)
  c.attack.num_iters = 11_900
  c.attack.snapshot_iters = PAPER_SNAPSHOTS
  c.attack.alpha = 20.0
  c.attack.lambda_min = 0.5
  c.attack.sigma = 1e-3
  c.attack.lr_x = 1.0
  c.attack.lr_lambda = 1.0

  # Confident match (SPEC §4.3).
  c.match = ml_collections.ConfigDict()
  c.match.threshold = 0.4
  c.match.gap = 0.05
  c.match.ssim_variant = "haim"
  c.match.postprocess = "rscale"

  c.matmul_precision = "highest"
  # Runtime fields.
  c.runs_per_device = 4          # runs vmapped together on each local device
  c.ssim_chunk = 16              # candidates scored against all training images at once
  c.data_dir = ""                # tfds data dir; "" means $TFDS_DATA_DIR
  c.cache_dir = ""               # decoded-CIFAR cache; "" means $KKTJAX_CACHE or ~/.cache/kktjax
  c.progress = True

  if variant == "tiny":
    c.phase1_runs = 12
    c.phase2_runs = 4
    c.phase2_pool = 400
    c.phase2_update_every = 4
    c.n_per_class = 20
    c.victim.width = 100
    c.victim.epochs = 1000
    c.victim.chunk_epochs = 500
    c.attack.m = 20
    c.attack.num_iters = TINY_SNAPSHOTS[-1]
    c.attack.snapshot_iters = TINY_SNAPSHOTS
    c.runs_per_device = 4
  return c
