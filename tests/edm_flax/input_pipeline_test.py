"""Tests of the synthetic pair source (edm_flax/input_pipeline.py)."""
import numpy as np
import pytest

from edm_flax import input_pipeline


def test_batches_have_the_pair_format():
  batch = next(input_pipeline.SyntheticPairSource(3, seed=0))
  input_pipeline.validate_batch(batch)
  for k in ('noisy', 'clean'):
    assert batch[k].dtype == np.float32 and 0.0 <= batch[k].min() and batch[k].max() <= 1.0
  assert batch['aug_labels'].shape == (3, 9)
  assert set(np.unique(batch['aug_labels'][:, 0])) <= {0.0, 1.0}
  np.testing.assert_array_equal(batch['aug_labels'][:, 1:], 0.0)
  assert 0.05 < np.std(batch['noisy'] - batch['clean']) < 0.3  # noise_std 0.2, clipped


def test_state_resumes_the_same_batches():
  source = input_pipeline.SyntheticPairSource(2, seed=4)
  next(source)
  state = source.get_state()
  expected = [next(source) for _ in range(2)]
  other = input_pipeline.SyntheticPairSource(2, seed=4)
  other.set_state(state)
  for want in expected:
    got = next(other)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  with pytest.raises(ValueError, match='seed'):
    input_pipeline.SyntheticPairSource(2, seed=5).set_state(state)


@pytest.mark.parametrize('batch, match', [
    ({'noisy': np.zeros((2, 32, 32, 3)), 'clean': np.zeros((2, 32, 32, 3))}, 'missing'),
    ({'noisy': np.zeros((2, 32, 32, 3)), 'clean': np.zeros((2, 16, 16, 3)),
      'aug_labels': np.zeros((2, 9))}, 'clean'),
    ({'noisy': np.zeros((2, 32, 32, 3)), 'clean': np.zeros((2, 32, 32, 3)),
      'aug_labels': np.zeros((2, 8))}, 'aug_labels'),
])
def test_validate_batch_rejects_bad_batches(batch, match):
  with pytest.raises(ValueError, match=match):
    input_pipeline.validate_batch(batch)
