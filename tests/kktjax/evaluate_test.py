"""Tests of kktjax.evaluate: every stage on a tiny config, victim resume, report from stored
stage outputs."""
import json
import os
import shutil

import numpy as np
import pytest

from edm_flax import input_pipeline
from edm_flax import train
from edm_flax import train_dncnn
from edm_flax.configs import default as edm_config
from edm_flax.configs import dncnn as dncnn_config
from kktjax import evaluate
from kktjax import kkt
from kktjax.configs import evaluate as evaluate_config


def _tiny_restorers(tmp):
  c = edm_config.get_config("tiny")
  c.network.channel_mult, c.network.attn_resolutions = (1,), ()
  c.training.ckpt_every_steps = 2
  train.train_and_evaluate(c, str(tmp / "edm"), input_pipeline.SyntheticPairSource(4),
                           num_steps=2, progress=False)
  d = dncnn_config.get_config("tiny")
  train_dncnn.train(d, str(tmp / "dncnn"), input_pipeline.SyntheticPairSource(4), num_steps=2,
                    progress=False)
  return str(tmp / "edm"), str(tmp / "dncnn")


@pytest.fixture(scope="module")
def evaluated(cifar_dir, duplicates_csv, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("eval")
  edm_dir, dncnn_dir = _tiny_restorers(tmp)
  config = evaluate_config.get_config("tiny")
  config.victim.data_dir = cifar_dir
  config.victim.duplicate_lists = (duplicates_csv,)
  config.restorer_workdir, config.dncnn_workdir = edm_dir, dncnn_dir
  config.num_samples_avg = 2
  config.sampler_steps = 2
  workdir = str(tmp / "run")
  summary = evaluate.run(config, workdir, progress=False)
  return config, workdir, summary


def test_all_stages_produce_the_report(evaluated):
  config, workdir, summary = evaluated
  assert set(summary["methods"]) == {"plain", "dncnn", "diffusion_x1", "diffusion_x20"}
  assert summary["skipped_methods"] == {}
  assert summary["num_train"] == 2 * config.victim.n_per_class
  assert summary["runs"] == config.attack.num_runs
  assert summary["runs_kept"] + summary["runs_aborted"] + summary["runs_diverged"] == \
      config.attack.num_runs
  for f in ("report.md", "report.json", "fig1_best_grid.png", "fig2_sorted_scores.png",
            "fig3_scatter.png"):
    assert os.path.getsize(os.path.join(workdir, "report", f)) > 0
  md = open(os.path.join(workdir, "report", "report.md")).read()
  assert "| diffusion_x20 |" in md and "59" in md
  # The numbers in the report are the stored matching results.
  for name, m in summary["methods"].items():
    with np.load(os.path.join(workdir, "match", f"{name}.npz")) as f:
      best = f["best_ssim"]
    assert m["good_ssim"] == int(np.sum(best > config.good_threshold))
    np.testing.assert_allclose(m["best_ssim"], best, rtol=1e-6)
  plain = np.array(summary["methods"]["plain"]["best_ssim"])
  x20 = np.array(summary["methods"]["diffusion_x20"]["best_ssim"])
  assert summary["methods"]["diffusion_x20"]["worse_ssim_than_plain"] == \
      int(np.sum(x20 < plain - 1e-6))


def test_sweep_outputs_match_the_runs(evaluated):
  config, workdir, _ = evaluated
  runs = json.load(open(os.path.join(workdir, "sweep", "runs.json")))
  kept = [r["run"] for r in runs if r["status"] == kkt.RUNNING]
  images, meta = evaluate.load_candidates(workdir)
  n = 2 * config.attack.m
  assert len(images) == len(kept) * len(config.attack.snapshot_iters) * n
  assert sorted(set(meta["run"].tolist())) == kept
  assert images.min() >= 0 and images.max() <= 1   # post-processed (r-scaling)
  for r in runs:   # the swept hyperparameters lie in the paper's ranges
    assert 10 <= r["alpha"] <= 500 and 0.01 <= r["lambda_min"] <= 0.5
    assert 1e-6 <= r["sigma"] <= 0.1 and 0.01 <= r["lr_x"] <= 1
  restored = evaluate.load_restored(workdir, "diffusion_x20")
  assert restored.shape == images.shape


def test_report_rebuilds_from_stored_stage_outputs(evaluated):
  config, workdir, summary = evaluated
  before = json.load(open(os.path.join(workdir, "report", "report.json")))
  shutil.rmtree(os.path.join(workdir, "report"))
  again = evaluate.run(config, workdir, stages=["report"], progress=False)
  assert again["methods"] == before["methods"]
  with pytest.raises(ValueError, match="unknown evaluation stages"):
    evaluate.run(config, workdir, stages=["nope"])


def test_missing_restorer_is_skipped_with_reason(evaluated):
  config, workdir, _ = evaluated
  c = evaluate_config.get_config("tiny")
  c.update_from_flattened_dict({"victim.data_dir": config.victim.data_dir})
  c.victim.duplicate_lists = config.victim.duplicate_lists
  methods, skipped = evaluate.build_restorers(c)
  assert list(methods) == ["plain"]
  assert "restorer_workdir" in skipped["diffusion_x1"] and "dncnn_workdir" in skipped["dncnn"]


def test_victim_stage_resumes(cifar_dir, duplicates_csv, tmp_path):
  config = evaluate_config.get_config("tiny")
  config.victim.data_dir, config.victim.duplicate_lists = cifar_dir, (duplicates_csv,)
  straight = evaluate.stage_victim(config, str(tmp_path / "a"), progress=False)
  config.victim.epochs = 30
  evaluate.stage_victim(config, str(tmp_path / "b"), progress=False)
  config.victim.epochs = 60
  resumed = evaluate.stage_victim(config, str(tmp_path / "b"), progress=False)
  np.testing.assert_array_equal(resumed.state.params["W1"], straight.state.params["W1"])
  # Held-out victims draw from the test split minus the ciFAIR duplicates.
  from kktjax import data
  assert not set(resumed.indices[0].tolist()) & set(data.read_duplicate_list(duplicates_csv))
