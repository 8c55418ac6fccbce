#!/usr/bin/env bash
# The CPU-scale experiment of docs/results/README.md, every stage resumable. From the repo root,
# with TFDS_DATA_DIR and KKTJAX_CIFAR_DUPLICATES set (the Makefile's defaults work).
set -euo pipefail
W=${W:-workdirs/cpu}
PY=${PY:-.venv/bin/python}
# 1. Dataset: width-100 victims on 20+20 augmented CIFAR-10 *train* images, 40 candidates,
#    11 snapshots (the run stopped after 80 of 160 planned runs: phase 1 only).
$PY -m launch.generate_dataset --config=kktjax/configs/generate.py:tiny \
  --config.phase1_runs=128 --config.phase2_runs=32 --config.phase2_pool=2000 \
  --config.phase2_update_every=16 --config.runs_per_device=16 --workdir=$W/pairs
$PY -m launch.dataset_report --workdir=$W/pairs
# 2. Restorer: conditional EDM (DDPM++ layout at 24 channels, 2 levels) on the balanced stream.
$PY -m launch.train_restorer --config=edm_flax/configs/default.py:tiny --data_dir=$W/pairs \
  --config.network.model_channels=24 --config.training.batch_size=32 \
  --config.training.total_img=12800 --config.training.lr_rampup_img=3200 \
  --config.training.ema_halflife_img=2000 --config.training.log_every_steps=50 \
  --config.training.ckpt_every_steps=200 --workdir=$W/restorer
# 3. BF-DnCNN baseline (16 features, depth 10) on the same stream.
$PY -m launch.train_dncnn --config=edm_flax/configs/dncnn.py:tiny --data_dir=$W/pairs \
  --config.network.features=16 --config.network.depth=10 --config.training.batch_size=32 \
  --config.training.total_steps=1000 --config.training.lr_halving_steps="(625,750,875)" \
  --config.training.log_every_steps=50 --config.training.ckpt_every_steps=500 --workdir=$W/dncnn
# 4. Evaluation on a victim trained on held-out *test* images.
$PY -m launch.evaluate --config=kktjax/configs/evaluate.py:cpu --workdir=$W/eval \
  --config.restorer_workdir=$W/restorer --config.dncnn_workdir=$W/dncnn
