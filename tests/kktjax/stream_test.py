"""Tests for kktjax.stream: balanced subsets, noise examples, determinism and resumption."""
import json

import numpy as np
import pytest

from kktjax import records
from kktjax import stream

# Records per image for the synthetic datasets: below, at and above the target of 11.
Z_DESIGN = np.array([1, 5, 11, 12, 20, 50, 200, 1000])


def write_dataset(directory, z, num_shards=2, seed=0):
  """Images 0..len(z)-1 with z[j] records each, shuffled over `num_shards` shards."""
  rng = np.random.default_rng(seed)
  cifar_index = rng.permutation(np.repeat(np.arange(len(z)), z))
  writer = records.PairWriter(directory)
  for b, part in enumerate(np.array_split(cifar_index, num_shards)):
    n = part.size
    pairs = records.empty_pairs(n)
    pairs["cifar_index"] = part
    # Images tagged by their index so the tests can check what was read.
    pairs["clean"] = (part[:, None, None, None] / 100.0 + np.zeros((n, 32, 32, 3)))
    pairs["noisy"] = rng.uniform(0, 1, (n, 32, 32, 3))
    pairs["aug_labels"] = rng.normal(size=(n, 9))
    pairs["run_id"] = np.full(n, b)
    pairs["label"] = np.where(part % 2, 1, -1)
    writer.write_batch(b, pairs, run_ids=[b])
  return records.PairDataSource(directory)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------
# Balanced subsets.
# ------------------------------------------------------------------------------------------


def test_keep_probabilities():
  np.testing.assert_allclose(stream.keep_probabilities(np.array([0, 1, 11, 22, 1100])),
                             [0.0, 1.0, 1.0, 0.5, 0.01])


def test_balanced_plan_statistics():
  """Each record is kept independently with probability min(1, 11/z_j) in every epoch."""
  cifar_index = np.random.default_rng(0).permutation(np.repeat(np.arange(8), Z_DESIGN))
  z = Z_DESIGN[cifar_index]   # z of every record's image
  p = np.minimum(1.0, 11.0 / z)
  plan = stream.BalancedPlan(cifar_index, seed=3)
  epochs = 600
  hits = np.zeros(cifar_index.size)
  kept = np.zeros((epochs, 8))
  for e in range(epochs):
    keys = plan.epoch_keys(e)
    assert keys.size == plan.epoch_size(e)
    assert np.unique(keys).size == keys.size   # a subset: no repeats within an epoch
    assert not np.array_equal(keys, np.sort(keys))   # shuffled
    hits[keys] += 1
    kept[e] = np.bincount(cifar_index[keys], minlength=8)
  # Per image and epoch: mean z·p = min(z, 11), variance z·p·(1-p) (binomial).
  pj = np.minimum(1.0, 11.0 / Z_DESIGN)
  mean, var = Z_DESIGN * pj, Z_DESIGN * pj * (1 - pj)
  assert np.all(np.abs(kept.mean(0) - mean) <= 5 * np.sqrt(var / epochs) + 1e-12), kept.mean(0)
  ok = var > 0
  ratio = kept.var(0, ddof=1)[ok] / var[ok]
  assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio   # not a fixed count per image
  # Per record: hits ~ Binomial(epochs, p), uniform within each image (chi-square per image).
  for j in range(8):
    sel = cifar_index == j
    expect = epochs * p[sel][0]
    if p[sel][0] == 1.0:
      assert np.all(hits[sel] == epochs)
      continue
    chi2 = np.sum((hits[sel] - expect) ** 2 / (expect * (1 - p[sel][0])))
    dof = sel.sum()
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (j, chi2, dof)
  # Epochs differ (independent draws).
  assert not np.array_equal(np.sort(plan.epoch_keys(0)), np.sort(plan.epoch_keys(1)))


def test_balanced_plan_positions_concatenate_epochs():
  cifar_index = np.repeat(np.arange(20), 30)
  plan = stream.BalancedPlan(cifar_index, seed=5)
  epochs = [plan.epoch_keys(e) for e in range(4)]
  flat = np.concatenate(epochs)
  np.testing.assert_array_equal(plan.keys(0, flat.size), flat)
  a = epochs[0].size
  np.testing.assert_array_equal(plan.keys(a - 3, a + 4), flat[a - 3:a + 4])   # across a boundary
  fresh = stream.BalancedPlan(cifar_index, seed=5)   # random access far ahead, from scratch
  np.testing.assert_array_equal(fresh.keys(flat.size - 10, flat.size), flat[-10:])
  assert fresh.epoch_of(a) == (1, 0)


def test_balanced_plan_rejects_bad_input():
  with pytest.raises(ValueError, match="non-empty"):
    stream.BalancedPlan(np.zeros(0, np.int32), seed=0)
  with pytest.raises(ValueError, match="seed"):
    stream.BalancedPlan(np.zeros(3, np.int32), seed=-1)


# ------------------------------------------------------------------------------------------
# Noise examples.
# ------------------------------------------------------------------------------------------


def reference_rscale(x, mu):
  """Largest r >= 0 with clip(mu) + r·x in [0,1], by float64 bisection."""
  mu = np.clip(mu, 0, 1)
  inside = lambda r: np.all((mu + r * x >= 0) & (mu + r * x <= 1))
  lo, hi = 0.0, 1.0
  while inside(hi):
    hi *= 2
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if inside(mid) else (lo, mid)
  return lo


def test_postprocess_rscale_matches_bisection():
  rng = np.random.default_rng(0)
  for _ in range(5):
    x = rng.normal(0, 1e-3, (32, 32, 3))
    mu = rng.uniform(0.02, 0.98, (32, 32, 3))
    # Augmentation overshoots [0,1] slightly; only the clipped μ keeps r* > 0 here.
    mu.flat[:50] = np.where(x.flat[:50] < 0, 1.03, -0.02)
    out, r = stream.postprocess_rscale(x, mu)
    r_ref = reference_rscale(x, mu)
    np.testing.assert_allclose(r, r_ref, rtol=1e-9)
    np.testing.assert_allclose(out, np.clip(mu, 0, 1) + r_ref * x, atol=1e-9)
    assert out.min() >= -1e-12 and out.max() <= 1 + 1e-12
    # Invariant to the scale of x (r* absorbs it).
    np.testing.assert_allclose(stream.postprocess_rscale(7.0 * x, mu)[0], out, atol=1e-12)
  out, r = stream.postprocess_rscale(np.zeros((2, 2)), np.full((2, 2), 1.5))
  assert r == 0.0 and np.all(out == 1.0)


def test_postprocess_rscale_agrees_with_match():
  """The pipeline's NumPy copy must equal the attack's post-processing (SPEC §4.1)."""
  match = pytest.importorskip("kktjax.match")
  rng = np.random.default_rng(2)
  x = rng.normal(0, 1e-3, (3, 32, 32, 3))
  mu = rng.uniform(-0.02, 1.02, (32, 32, 3))
  mu[mu > 1] = 0.5   # keep r* > 0 for a meaningful comparison
  want_img, want_r = match.postprocess_rscale(x.astype(np.float32), mu.astype(np.float32))
  for i in range(3):
    img, r = stream.postprocess_rscale(x[i], mu)
    np.testing.assert_allclose(r, float(want_r[i]), rtol=1e-5)
    np.testing.assert_allclose(img, np.asarray(want_img[i]), atol=1e-6)


def test_noise_source_examples():
  rng = np.random.default_rng(1)
  m = 40
  pool = rng.uniform(-0.02, 1.02, (m, 32, 32, 3)).astype(np.float16)
  aug = rng.normal(size=(m, 9)).astype(np.float32)
  cidx = np.arange(1000, 1000 + m)
  binary = np.where(np.arange(m) < 20, -1, 1)
  src = stream.make_noise_source(pool, aug, cidx, set_size=m, binary_labels=binary)
  mu = np.clip(pool.astype(np.float64).mean(0), 0, 1)   # set = whole pool
  for _ in range(5):
    ex = src(rng)
    d = ex["noisy"].astype(np.float64) - mu
    assert ex["noisy"].dtype == np.float32 and 0 <= ex["noisy"].min() and ex["noisy"].max() <= 1
    assert np.abs(d).max() > 0
    # r* is maximal: a slightly longer step leaves [0,1].
    longer = mu + 1.001 * d
    assert longer.min() < -1e-7 or longer.max() > 1 + 1e-7
    j = ex["cifar_index"] - 1000
    np.testing.assert_array_equal(ex["clean"], pool[j].astype(np.float32))
    np.testing.assert_array_equal(ex["aug_labels"], aug[j])
  balanced = stream.make_noise_source(pool, aug, cidx, set_size=10, binary_labels=binary)
  members = balanced.draw_set(rng)
  assert np.unique(members).size == 10 and (binary[members] < 0).sum() == 5
  with pytest.raises(ValueError, match="set_size"):
    stream.make_noise_source(pool, aug, cidx, set_size=m + 1)
  with pytest.raises(ValueError, match="only 15 pool images"):
    stream.make_noise_source(pool, aug, cidx, set_size=40,
                             binary_labels=np.where(np.arange(m) < 15, -1, 1))


# ------------------------------------------------------------------------------------------
# The training stream.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  directory = tmp_path_factory.mktemp("pairs")
  # 10 images each at z = 11, 22, 44: 770 records, an epoch keeps about 330.
  z = np.repeat([11, 22, 44], 10)
  return str(directory), write_dataset(directory, z, num_shards=3), z


def test_stream_balance_content_and_noise_fraction(dataset):
  directory, src, z = dataset
  batch_size, num_batches = 16, 150
  it = stream.make_train_stream(directory, batch_size, seed=0, noise_fraction=0.1,
                                noise_pool_size=200, noise_set_size=20, read_threads=0)
  batches = take(it, num_batches)
  noise = np.array([b["is_noise"].sum() for b in batches])
  # floor(k·B·f) noise examples before batch k: exactly 10% over whole runs of batches.
  assert set(noise) <= {1, 2}
  assert noise.sum() == int(num_batches * batch_size * 0.1)
  counts = np.zeros(len(z))
  for b in batches:
    assert b["noisy"].shape == (batch_size, 32, 32, 3) and b["noisy"].dtype == np.float32
    assert b["clean"].dtype == np.float32 and b["aug_labels"].shape == (batch_size, 9)
    assert b["noisy"].min() >= 0 and b["noisy"].max() <= 1
    real = ~b["is_noise"]
    keys = b["record_key"][real]
    ref = src.read_batch(keys)
    np.testing.assert_array_equal(b["noisy"][real], ref["noisy"].astype(np.float32))
    np.testing.assert_array_equal(b["clean"][real], ref["clean"].astype(np.float32))
    np.testing.assert_array_equal(b["aug_labels"][real], ref["aug_labels"])
    np.testing.assert_array_equal(b["cifar_index"][real], ref["cifar_index"])
    assert np.all(b["record_key"][~real] == -1)
    # Noise examples pair with a pool image: clean is tagged with its cifar_index.
    np.testing.assert_allclose(b["clean"][~real][:, 0, 0, 0],
                               (b["cifar_index"][~real] / 100.0).astype(np.float16), rtol=0)
    counts += np.bincount(b["cifar_index"][real], minlength=len(z))
  # About 11 per image per epoch whatever z_j (raw frequencies would be 1:2:4).
  epochs = (num_batches * batch_size - noise.sum()) / (11 * len(z))
  per_image = counts / epochs
  groups = per_image.reshape(3, 10).mean(1)
  np.testing.assert_allclose(groups, 11.0, rtol=0.15)


def test_stream_is_deterministic(dataset):
  directory, src, _ = dataset
  kw = dict(noise_pool_size=200, noise_set_size=20)
  a = take(stream.make_train_stream(src, 8, seed=4, read_threads=0, **kw), 12)
  b = take(stream.make_train_stream(directory, 8, seed=4, read_threads=2, **kw), 12)
  assert_batches_equal(a, b)
  c = take(stream.make_train_stream(src, 8, seed=5, read_threads=0, **kw), 12)
  assert not np.array_equal(a[0]["record_key"], c[0]["record_key"])


def test_stream_state_resumes_exactly(dataset):
  directory, src, _ = dataset
  kw = dict(noise_pool_size=200, noise_set_size=20)
  it = stream.make_train_stream(directory, 24, seed=9, read_threads=2, **kw)
  take(it, 11)   # about 240 real records: the next batches cross into epoch 1
  state = json.loads(json.dumps(it.get_state()))   # as stored in a checkpoint
  assert state == {"next_batch": 11}
  expected = take(it, 6)
  resumed = stream.make_train_stream(directory, 24, seed=9, read_threads=0, **kw)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 6), expected)
  it.set_state({"next_batch": 13})   # rewinding an open stream
  assert_batches_equal(take(it, 4), expected[2:])
  with pytest.raises(ValueError, match="next_batch"):
    it.set_state({"next_batch": -1})
  # The grain IterDataset form resumes from its own (worker-dependent) state.
  gi = iter(stream.make_train_dataset(directory, 24, seed=9, read_threads=0, **kw))
  take(gi, 11)
  gstate = gi.get_state()
  gi2 = iter(stream.make_train_dataset(directory, 24, seed=9, read_threads=0, **kw))
  gi2.set_state(gstate)
  assert_batches_equal(take(gi2, 6), expected)


def test_bounded_stream_ends(dataset):
  _, src, _ = dataset
  it = stream.make_train_stream(src, 8, seed=0, noise_fraction=0.0, num_batches=3,
                                read_threads=0)
  assert len(take(it, 3)) == 3
  with pytest.raises(StopIteration):
    next(it)


def test_custom_noise_fn_and_no_noise(dataset):
  directory, src, _ = dataset

  def noise_fn(rng):
    return {"noisy": np.full((32, 32, 3), rng.uniform()), "clean": np.zeros((32, 32, 3)),
            "aug_labels": np.ones(9), "cifar_index": 49999}

  b = next(stream.make_train_stream(src, 10, seed=1, noise_fraction=0.3, noise_fn=noise_fn,
                                    read_threads=0))
  assert b["is_noise"].sum() == 3
  assert np.all(b["cifar_index"][b["is_noise"]] == 49999)
  assert np.all(b["aug_labels"][b["is_noise"]] == 1)
  b = next(stream.make_train_stream(src, 10, seed=1, noise_fraction=0.0, read_threads=0))
  assert not b["is_noise"].any()


def test_stream_rejects_bad_options(dataset):
  directory, _, _ = dataset
  with pytest.raises(ValueError, match="batch_size"):
    stream.make_train_stream(directory, 0, seed=0)
  with pytest.raises(ValueError, match="noise_fraction"):
    stream.make_train_stream(directory, 8, seed=0, noise_fraction=1.0)
