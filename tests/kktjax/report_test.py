"""Tests of kktjax.report on a small hand-written dataset whose numbers are known."""
import json
import os

import matplotlib.image
import numpy as np
import pytest

from kktjax import generate
from kktjax import records
from kktjax import report

SNAPS = (10, 20, 40)


def _pairs(run_id, candidates, targets, rng):
  """Pairs of matched candidates, stored like the generator: by candidate, then snapshot."""
  c = np.repeat(candidates, len(SNAPS))
  n = c.size
  ssim = rng.uniform(0.1, 0.9, n).astype(np.float32)
  return {"noisy": rng.uniform(0, 1, (n, 32, 32, 3)), "clean": rng.uniform(0, 1, (n, 32, 32, 3)),
          "cifar_index": np.repeat(targets, len(SNAPS)).astype(np.int32),
          "aug_labels": np.zeros((n, 9), np.float32), "run_id": np.full(n, run_id, np.int64),
          "candidate": c.astype(np.int16), "label": np.where(c < 2, -1, 1).astype(np.int8),
          "snapshot_iter": np.tile(SNAPS, len(candidates)).astype(np.int32), "ssim": ssim,
          "match_ssim": np.repeat(ssim.reshape(-1, len(SNAPS)).max(1), len(SNAPS)),
          "margin": np.full(n, 0.1, np.float32), "scale_r": np.ones(n, np.float32),
          "phase": np.ones(n, np.uint8), "seed": np.zeros(n, np.uint32)}


def _entry(run_id, num_confident, hist_rows, failed=False, diverged=False, phase=1):
  return {"run_id": run_id, "phase": phase, "num_confident": num_confident,
          "num_conflicts": 1 if num_confident > 1 else 0,
          "num_pairs": num_confident * len(SNAPS),
          "victim": {"failed": failed, "train_error": 0.0}, "diverged": diverged,
          "b1_hist": hist_rows, "snapshot_iters": list(SNAPS)}


@pytest.fixture
def dataset(tmp_path):
  rng = np.random.default_rng(0)
  workdir = str(tmp_path / "gen")
  writer = records.PairWriter(generate.process_dir(workdir, 0))
  hist = np.zeros((len(SNAPS), 20), int)
  hist[:, 9] = [1, 2, 3]    # b1 in [0.45, 0.5): counted as > 0.4
  hist[:, 2] = 4
  p0 = _pairs(0, [0, 3], [7, 7], rng)            # two candidates matched to image 7
  p2 = _pairs(2, [1], [11], rng)
  both = {k: np.concatenate([p0[k], p2[k]]) for k in p0}
  writer.write_batch(0, both, run_ids=[0, 1, 2], run_entries=[
      _entry(0, 2, hist), _entry(1, 0, hist, failed=True), _entry(2, 1, hist)])
  writer.write_batch(3, records.empty_pairs(0), run_ids=[3],
                     run_entries=[_entry(3, 0, hist, diverged=True, phase=2)])
  with open(os.path.join(workdir, generate.CONFIG_NAME), "w") as f:
    json.dump({"phase1_runs": 3, "phase2_runs": 2, "n_per_class": 2,
               "victim": {"width": 8, "epochs": 5, "recipe": "adadelta"},
               "attack": {"m": 2, "num_iters": 40},
               "match": {"ssim_variant": "haim", "postprocess": "rscale", "threshold": 0.4,
                         "gap": 0.05}}, f)
  return workdir, both


def test_report_numbers_and_files(dataset):
  workdir, pairs = dataset
  numbers = report.build_report(workdir, max_records=100, num_samples=2)
  assert numbers["runs"] == 4 and numbers["runs_planned"] == 5
  assert numbers["pairs"] == 9 and numbers["pairs_per_run"] == pytest.approx(9 / 4)
  assert numbers["images_covered"] == 2
  assert numbers["pairs_per_image_max"] == 6 and numbers["pairs_per_image_median"] == 4.5
  assert numbers["confident_candidates"] == 3 and numbers["conflicts"] == 1
  assert numbers["failed_victims"] == 1 and numbers["diverged_runs"] == 1
  assert numbers["runs_phase2"] == 1
  assert numbers["b1_above_0.4_by_snapshot"] == [4, 8, 12]   # 4 runs × [1, 2, 3]
  for s, t in enumerate(SNAPS):
    want = np.median(pairs["ssim"][pairs["snapshot_iter"] == t])
    assert numbers["sample_ssim_median_by_snapshot"][s] == pytest.approx(want)
  out = os.path.join(workdir, "report")
  for name in ("image_counts.png", "ssim_by_snapshot.png", "samples.png"):
    img = matplotlib.image.imread(os.path.join(out, name))
    assert img.ndim == 3 and min(img.shape[:2]) > 100
  with open(os.path.join(out, "report.json")) as f:
    assert json.load(f)["pairs"] == 9
  md = open(os.path.join(out, "report.md")).read()
  assert "| pairs | 9 |" in md and "| images_covered | 2 |" in md and "samples.png" in md


def test_sample_groups_are_whole_candidates(dataset):
  workdir, _ = dataset
  source = generate.open_dataset(workdir)
  groups = report._sample_groups(source, len(SNAPS), 5, np.random.default_rng(1))
  assert len(groups) == 3   # only three matched candidates exist
  seen = set()
  for g in groups:
    assert list(g["snapshot_iter"]) == list(SNAPS)
    assert len(set(g["run_id"])) == len(set(g["candidate"])) == len(set(g["cifar_index"])) == 1
    seen.add((int(g["run_id"][0]), int(g["candidate"][0])))
  assert seen == {(0, 0), (0, 3), (2, 1)}


def test_report_refuses_a_directory_without_pairs(tmp_path):
  with pytest.raises(ValueError, match="no generated pairs"):
    report.build_report(str(tmp_path))
