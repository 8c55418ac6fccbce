"""Tests of kktjax.data: loading, labels, balanced sampling, mean subtraction, held-out pool."""
import os

import numpy as np
import pytest

from kktjax import data


def test_binary_labels_map():
  np.testing.assert_array_equal(data.binary_labels(np.arange(10)),
                                [-1, -1, 1, 1, 1, 1, 1, 1, -1, -1])
  with pytest.raises(data.DataError, match="0..9"):
    data.binary_labels(np.array([3, 11]))


def test_flatten_chw_matches_torch_layout():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(2, 32, 32, 3))
  flat = data.flatten_chw(img)
  # PyTorch: ToTensor gives C,H,W; .view(-1) flattens channel-major.
  np.testing.assert_array_equal(flat, np.transpose(img, (0, 3, 1, 2)).reshape(2, -1))
  np.testing.assert_array_equal(data.unflatten_chw(flat), img)


def test_balanced_sample_is_balanced_seeded_and_without_replacement():
  labels = np.repeat(np.arange(10), 50)
  a = data.balanced_sample(np.random.default_rng(1), labels, 40)
  b = data.balanced_sample(np.random.default_rng(1), labels, 40)
  c = data.balanced_sample(np.random.default_rng(2), labels, 40)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len(np.unique(a)) == 80
  y = data.binary_labels(labels[a])
  np.testing.assert_array_equal(y, [-1] * 40 + [1] * 40)
  with pytest.raises(data.DataError, match="only 200"):
    data.balanced_sample(0, labels, 201)


def test_victim_inputs_subtract_own_mean():
  rng = np.random.default_rng(0)
  imgs = rng.uniform(size=(6, 32, 32, 3)).astype(np.float32)
  vd = data.victim_inputs(imgs, [1, -1, 1, -1, 1, -1])
  np.testing.assert_allclose(vd.mu, imgs.astype(np.float64).mean(0), atol=1e-6)
  np.testing.assert_allclose(vd.x, data.flatten_chw(imgs - vd.mu), atol=1e-7)
  np.testing.assert_allclose(vd.x.mean(0), 0, atol=1e-6)
  with pytest.raises(data.DataError, match=r"\[n, 32, 32, 3\]"):
    data.victim_inputs(imgs[:, :16], [1] * 6)


def test_bad_data_dir_is_one_line_error(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_cifar10("train", str(tmp_path / "nope"), cache_dir="")
  with pytest.raises(data.DataError, match="no prepared 'cifar10'"):
    data.load_cifar10("train", str(tmp_path), cache_dir="")
  with pytest.raises(data.DataError, match="unknown CIFAR-10 split"):
    data.load_cifar10("validation", str(tmp_path))


def test_malformed_duplicate_list(tmp_path):
  p = tmp_path / "dups.csv"
  p.write_text("TestID,TrainID\n1,2\n")
  with pytest.raises(data.DataError, match="test_index_in_npz"):
    data.read_duplicate_list(str(p))
  p.write_text("TestID,test_index_in_npz\n1,abc\n")
  with pytest.raises(data.DataError, match=":2: test_index_in_npz 'abc'"):
    data.read_duplicate_list(str(p))
  with pytest.raises(data.DataError, match="does not exist"):
    data.read_duplicate_list(str(tmp_path / "missing.csv"))


def test_real_cifar10(cifar_dir, tmp_path):
  test = data.load_cifar10("test", cifar_dir, cache_dir=str(tmp_path))
  assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
  # This copy's test split is class-major (shared/data/README.md).
  np.testing.assert_array_equal(test.labels, np.repeat(np.arange(10), 1000))
  # Published per-channel means of this copy's test split.
  np.testing.assert_allclose(test.images.reshape(-1, 3).mean(0) / 255,
                             [0.4941, 0.4851, 0.4504], atol=2e-4)
  cached = os.listdir(tmp_path)
  assert len(cached) == 1 and cached[0].startswith("cifar10-test-")
  again = data.load_cifar10("test", cifar_dir, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.images, test.images)

  train = data.load_cifar10("train", cifar_dir)
  # Canonical order: the labels of train_00000..09 start data_batch_1.
  np.testing.assert_array_equal(train.labels[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  idx = data.balanced_sample(0, train.labels, 150)
  y = data.binary_labels(train.labels[idx])
  assert (y == -1).sum() == 150 and (y == 1).sum() == 150
  assert set(train.labels[idx[:150]]) <= set(data.VEHICLES)


def test_heldout_pool(duplicates_csv):
  pool = data.heldout_pool([duplicates_csv])
  dropped = data.read_duplicate_list(duplicates_csv)
  assert len(dropped) > 250   # 286 mapped rows, a few test images map twice
  assert len(pool) == 10000 - len(dropped)
  assert not set(pool) & set(dropped)
