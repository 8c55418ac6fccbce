"""Tests of kktjax.generate: determinism, exactly-once resume under SIGKILL, device sharding,
phase-2 sampling, and the consistency of every stored pair with an independent recomputation.

All tests share one tiny config on synthetic 32×32 images. The match rule is opened up
(threshold −1, gap 0) so that every candidate is confident and the datasets are not empty; the
rule itself is tested in match_test.py. Subprocess tests share a persistent XLA compilation cache
so that only the first subprocess compiles.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from kktjax import augment
from kktjax import data as data_lib
from kktjax import generate
from kktjax import metrics
from kktjax import records
from kktjax import report
from kktjax import seeding
from kktjax.configs import generate as generate_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_IMAGES = 120


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = generate_config.get_config("tiny")
  c.seed = 7
  c.phase1_runs, c.phase2_runs = 12, 8
  c.phase2_pool, c.phase2_update_every = 40, 2
  c.n_per_class = 4
  c.victim.width = 16
  c.victim.epochs, c.victim.chunk_epochs = 20, 10
  c.attack.m = 3
  c.attack.num_iters, c.attack.snapshot_iters = 8, (2, 4, 8)
  c.match.threshold, c.match.gap = -1.0, 0.0
  c.runs_per_device = 2
  c.progress = False
  for k, v in overrides.items():   # "attack.lr_x" sets c.attack.lr_x
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  return c


def synthetic_cifar() -> data_lib.Cifar10:
  rng = np.random.default_rng(123)
  return data_lib.Cifar10(rng.integers(0, 256, (NUM_IMAGES, 32, 32, 3), dtype=np.uint8),
                          np.arange(NUM_IMAGES) % 10)


def sorted_records(workdir: str) -> dict[str, np.ndarray]:
  src = generate.open_dataset(workdir)
  batch = src.read_batch(np.arange(len(src)))
  order = np.lexsort((batch["snapshot_iter"], batch["candidate"], batch["run_id"]))
  return {k: v[order] for k, v in batch.items()}


def assert_same_records(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  assert len(a["run_id"]) == len(b["run_id"]) > 0
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=f"field {k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted in-process run: 20 runs, batches of 2 on one device."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = tiny_config()
  stats = generate.run(config, workdir, cifar=synthetic_cifar(), devices=jax.local_devices()[:1])
  return workdir, config, stats


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
  """A script that runs the generator on the synthetic data, and its shared compile cache."""
  d = tmp_path_factory.mktemp("subprocess")
  cifar = synthetic_cifar()
  np.savez(d / "cifar.npz", images=cifar.images, labels=cifar.labels)
  script = d / "gen.py"
  script.write_text(
      "import json, sys\n"
      "import jax\n"
      "jax.config.update('jax_compilation_cache_dir', sys.argv[4])\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)\n"
      "jax.config.update('jax_default_matmul_precision', 'highest')\n"
      "import ml_collections, numpy as np\n"
      "from kktjax import data, generate\n"
      "config = ml_collections.ConfigDict(json.load(open(sys.argv[1])))\n"
      "f = np.load(sys.argv[2])\n"
      "stats = generate.run(config, sys.argv[3], cifar=data.Cifar10(f['images'], f['labels']))\n"
      "print('DEVICES', len(jax.local_devices()))\n")
  return d, script


def _run_script(env_dir, script, config, workdir, extra_env=None):
  cfg = env_dir / f"config-{os.path.basename(workdir)}.json"
  cfg.write_text(config.to_json())
  env = dict(os.environ, **(extra_env or {}))
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.Popen(
      [sys.executable, str(script), str(cfg), str(env_dir / "cifar.npz"), str(workdir),
       str(env_dir / "jax_cache")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _ledger_lines(workdir) -> int:
  path = os.path.join(generate.process_dir(str(workdir), 0), records.LEDGER_NAME)
  return len(records.Ledger(path).read())


# ------------------------------------------------------------------------------------------
def test_reference_dataset_is_complete(reference):
  workdir, config, stats = reference
  entries = generate.run_entries(workdir)
  assert [e["run_id"] for e in entries] == list(range(20))
  assert stats["complete"] and stats["runs"] == 20
  # Threshold −1: every candidate of every run gives one pair per snapshot.
  per_run = 2 * config.attack.m * len(config.attack.snapshot_iters)
  assert stats["pairs"] == 20 * per_run == sum(e["num_pairs"] for e in entries)
  assert stats["failed_victims"] == 0 and stats["diverged_runs"] == 0
  counts = records.per_image_counts(generate.dataset_dirs(workdir)[0])
  assert stats["images_covered"] == int(np.sum(counts > 0))
  with open(os.path.join(workdir, "stats.json")) as f:
    assert json.load(f)["pairs"] == stats["pairs"]


def test_report_builds_from_the_generated_dataset(reference, tmp_path):
  workdir, _, stats = reference
  numbers = report.build_report(workdir, str(tmp_path), max_records=100, num_samples=3)
  assert numbers["pairs"] == stats["pairs"] and numbers["runs"] == 20
  assert numbers["images_covered"] == stats["images_covered"]
  assert numbers["sampled_pairs"] == 100
  for name in ("report.md", "report.json", "image_counts.png", "ssim_by_snapshot.png",
               "samples.png"):
    assert os.path.getsize(tmp_path / name) > 0


def test_pairs_match_an_independent_recomputation(reference):
  """Each pair's clean image, labels and SSIM follow from its run's seed, recomputed here."""
  workdir, config, _ = reference
  recs = sorted_records(workdir)
  entries = {e["run_id"]: e for e in generate.run_entries(workdir)}
  cifar = synthetic_cifar()
  n, m = 2 * config.n_per_class, config.attack.m
  for r in (0, 13):   # a phase-1 and a phase-2 run
    sel = recs["run_id"] == r
    idx = np.asarray(entries[r]["cifar_indices"])
    keys = jax.random.split(seeding.stream_key(config.seed, r, "augment"), n)
    aug = {int(i): augment.augment(keys[j], cifar.images[i], config.augment.to_dict())
           for j, i in enumerate(idx)}
    for k in np.nonzero(sel)[0]:
      img, labels = aug[int(recs["cifar_index"][k])]
      np.testing.assert_allclose(recs["clean"][k], img, atol=1e-3)
      np.testing.assert_allclose(recs["aug_labels"][k], labels, atol=1e-6)
      assert recs["label"][k] == (-1 if recs["candidate"][k] < m else 1)
      assert recs["phase"][k] == (1 if r < config.phase1_runs else 2)
      assert 0.0 <= recs["noisy"][k].min() and recs["noisy"][k].max() <= 1.0
    # The stored SSIM is that of the (float32) snapshot; recompute it from the float16 copies.
    noisy = recs["noisy"][sel].astype(np.float32)
    clean = np.clip(recs["clean"][sel].astype(np.float32), 0, 1)
    np.testing.assert_allclose(metrics.ssim(noisy, clean), recs["ssim"][sel], atol=5e-3)
    # match_ssim is b1 at the chosen snapshot: one of the candidate's own SSIMs to T.
    for c in range(2 * m):
      group = sel & (recs["candidate"] == c)
      assert group.sum() == len(config.attack.snapshot_iters)
      assert np.isin(recs["match_ssim"][group][0], recs["ssim"][group])


def test_run_recomputed_alone_gives_identical_records(reference):
  workdir, config, _ = reference
  recs = sorted_records(workdir)
  cifar = synthetic_cifar()
  fns = generate.device_fns(config, generate.make_mesh(jax.local_devices()[:1]))  # cached
  index = np.concatenate([records.read_index(p) for p in generate.shard_paths(workdir)])
  for r in (3, 15):   # batch-mates in the reference: 2 and 14; here padded with copies of r
    horizon = generate.count_block_start(config, r)
    counts = None
    if r >= config.phase1_runs:
      counts = np.bincount(index["cifar_index"][index["run_id"] < horizon], minlength=NUM_IMAGES)
    with jax.default_matmul_precision("highest"):
      res = generate.process_batch(config, fns, cifar, [r], 2, counts)
    sel = recs["run_id"] == r
    stored = records.from_structured(records.to_structured(res.pairs))   # float16 images
    assert_same_records({k: v[sel] for k, v in recs.items()}, stored)


@pytest.mark.parametrize("field, flag", [("victim.learning_rate", "failed"),
                                         ("attack.lr_x", "diverged")])
def test_failed_victims_and_diverged_attacks_give_no_pairs(reference, field, flag):
  _, config, _ = reference
  config = tiny_config(**{field: 1e30})   # overflows within a few steps
  fns = generate.device_fns(config, generate.make_mesh(jax.local_devices()[:1]))
  with jax.default_matmul_precision("highest"):
    res = generate.process_batch(config, fns, synthetic_cifar(), [0, 1], 2)
  assert len(res.pairs["run_id"]) == 0
  for e in res.entries:
    got = e["victim"]["failed"] if flag == "failed" else e["diverged"]
    assert got and e["num_pairs"] == 0 and e["num_confident"] == 0


def test_phase2_draws_only_least_seen_images(reference):
  workdir, config, _ = reference
  index = np.concatenate([records.read_index(p) for p in generate.shard_paths(workdir)])
  for e in generate.run_entries(workdir):
    if e["phase"] != 2:
      continue
    z = np.bincount(index["cifar_index"][index["run_id"] < e["count_horizon"]],
                    minlength=NUM_IMAGES)
    assert e["count_horizon"] == generate.count_block_start(config, e["run_id"])
    # The pool is the 40 least-seen images: none of the run's images may be seen more often
    # than the 40th-smallest count. Here that count is 0, a strict test (uniform sampling
    # would hit one of the ~35 seen images with high probability).
    cutoff = np.sort(z)[config.phase2_pool - 1]
    assert cutoff == 0
    assert z[e["cifar_indices"]].max() <= cutoff
    y = data_lib.binary_labels(synthetic_cifar().labels[e["cifar_indices"]])
    assert (y == -1).sum() == (y == 1).sum() == config.n_per_class


def test_least_seen_pool_ties_and_class_top_up():
  labels = np.arange(100) % 10                     # 40 vehicles, 60 animals
  counts = np.full(100, 5)
  counts[:30] = 0                                  # 0..29: least seen (12 vehicles, 18 animals)
  counts[30:40] = 1
  pools = [generate.least_seen_pool(np.random.default_rng(s), counts, labels, 35, 3)
           for s in range(2)]
  for pool in pools:
    assert len(pool) == 35 and set(range(30)) <= set(pool) and set(pool) <= set(range(40))
  assert not np.array_equal(pools[0], pools[1])    # ties at count 1 broken at random
  # A pool of 10 that holds no vehicle gets the 3 least-seen vehicles added.
  counts = np.where(np.isin(labels, data_lib.VEHICLES), 9, 0)
  counts[[0, 1, 8]] = [3, 4, 5]
  pool = generate.least_seen_pool(np.random.default_rng(0), counts, labels, 10, 3)
  assert len(pool) == 13 and {0, 1, 8} <= set(pool)
  assert np.all(counts[pool][~np.isin(pool, [0, 1, 8])] == 0)


def test_seen_counts_respect_the_horizon():
  sc = generate.SeenCounts(5, horizon=2)
  sc.add(np.array([0, 1, 2, 3, 3]), np.array([0, 1, 2, 3, 3]))
  np.testing.assert_array_equal(sc.before(2), [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(sc.before(4), [1, 1, 1, 2, 0])
  with pytest.raises(ValueError, match="moved back"):
    sc.before(3)


def test_bad_config_and_resume_with_other_config(reference, tmp_path):
  with pytest.raises(ValueError, match="snapshot_iters"):
    generate.run(tiny_config(**{"attack.snapshot_iters": (4, 2)}), str(tmp_path))
  with pytest.raises(ValueError, match="phase2_pool"):
    generate.run(tiny_config(phase2_pool=4), str(tmp_path))
  workdir, _, _ = reference
  with pytest.raises(ValueError, match="another config"):
    generate.run(tiny_config(seed=8), workdir, cifar=synthetic_cifar())


def test_kill_and_resume_is_exactly_once(reference, subprocess_env, tmp_path):
  """SIGKILL the generator ≥ 10 times at random points; the result equals the reference."""
  env_dir, script = subprocess_env
  _, config, _ = reference
  config = tiny_config(runs_per_device=1)   # 20 batches of 1 run (reference: 10 batches of 2)
  workdir = tmp_path / "killed"
  rnd = random.Random(0)
  kills, gaps = 0, []   # gaps: seconds between consecutive commits, to scale the kill delay
  for _ in range(60):
    if kills >= 10 or (_ledger_lines(workdir) if workdir.exists() else 0) >= 20:
      break
    before = _ledger_lines(workdir) if workdir.exists() else 0
    proc = _run_script(env_dir, script, config, workdir)
    t_commit = last_t = None
    while proc.poll() is None:
      lines = _ledger_lines(workdir) if workdir.exists() else 0
      if lines > before:
        now = time.time()
        if last_t is not None:
          gaps.append((now - last_t) / (lines - before))
        if t_commit is None:
          t_commit = now
          batch_time = float(np.median(gaps)) if gaps else 0.3
          before_kill = rnd.uniform(0, 1.5 * batch_time)   # mid-compute, -write or -commit
        last_t, before = now, lines
      if t_commit is not None and time.time() - t_commit >= before_kill:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        break
      time.sleep(0.005)
    if proc.returncode not in (0, -signal.SIGKILL):
      raise AssertionError(proc.stdout.read().decode()[-3000:])
  assert kills >= 10
  proc = _run_script(env_dir, script, config, workdir)
  out = proc.communicate()[0].decode()
  assert proc.returncode == 0, out[-3000:]
  ledger = records.Ledger(os.path.join(generate.process_dir(str(workdir), 0),
                                       records.LEDGER_NAME)).read()
  run_ids = [r for e in ledger for r in e["run_ids"]]
  assert sorted(run_ids) == list(range(20))          # each run committed exactly once
  assert_same_records(sorted_records(reference[0]), sorted_records(str(workdir)))
  assert [e["run_id"] for e in generate.run_entries(str(workdir))] == list(range(20))


def test_runs_spread_over_four_devices_match_one_device(reference, subprocess_env, tmp_path):
  env_dir, script = subprocess_env
  config = tiny_config(runs_per_device=1)   # 4 devices × 1 run = batches of 4
  workdir = tmp_path / "four"
  proc = _run_script(env_dir, script, config, workdir,
                     {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  out = proc.communicate()[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert "DEVICES 4" in out
  ledger = records.Ledger(os.path.join(generate.process_dir(str(workdir), 0),
                                       records.LEDGER_NAME)).read()
  assert all(e["meta"]["devices"] == 4 and e["meta"]["runs_per_shard"] == 1 for e in ledger)
  assert [len(e["run_ids"]) for e in ledger[:3]] == [4, 4, 4]   # phase 1: 12 runs
  assert_same_records(sorted_records(reference[0]), sorted_records(str(workdir)))
