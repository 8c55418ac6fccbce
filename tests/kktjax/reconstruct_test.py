"""Tests of kktjax.reconstruct (the launch/reconstruct.py job) on a tiny real victim."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kktjax import reconstruct
from kktjax import victim
from kktjax.configs import reconstruct as reconstruct_config
from kktjax.configs import victims as victims_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_reconstruct_job_writes_summary_snapshots_and_grid(cifar_dir, tmp_path):
  vc = victims_config.get_config("tiny")
  vc.data_dir, vc.num_victims, vc.n_per_class, vc.width = cifar_dir, 2, 4, 64
  vc.epochs, vc.chunk_epochs = 60, 60
  victim.train_victims(vc, str(tmp_path / "v"), progress=False)
  rc = reconstruct_config.get_config("tiny")
  rc.num_runs = 2
  summary = reconstruct.run(str(tmp_path / "v"), rc, str(tmp_path / "r"), progress=False)
  assert len(summary["victims"]) == 2
  for k, v in enumerate(summary["victims"]):
    assert v["num_train"] == 8 and len(v["best_ssim_per_train_image"]) == 8
    assert len(v["runs"]) == 2
    for r in v["runs"]:
      assert r["status"] == "finished" and r["steps"] == rc.num_iters
      assert np.isfinite(r["final_loss"]) and 0 <= r["confident_matches"] <= 2 * rc.m
      assert set(r["hparams"]) == {"alpha", "lambda_min", "sigma", "lr_x", "lr_lambda"}
      np.testing.assert_allclose(r["hparams"]["alpha"], rc.alpha)
    best = np.array(v["best_ssim_per_train_image"])
    assert v["good_reconstructions"] == int(np.sum(best > 0.4))
    with np.load(tmp_path / "r" / f"snapshots_victim{k}.npz") as f:
      assert f["snapshots"].shape == (2, len(rc.snapshot_iters), 2 * rc.m, 3072)
    assert os.path.getsize(tmp_path / "r" / f"grid_victim{k}.png") > 0
  with open(tmp_path / "r" / "summary.json") as f:
    assert json.load(f)["iterations"] == rc.num_iters


def test_missing_victims_is_a_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "launch.reconstruct", f"--victims={tmp_path}/none",
       f"--workdir={tmp_path}/out"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "error: no victim checkpoint" in proc.stderr
  assert "Traceback" not in proc.stderr
