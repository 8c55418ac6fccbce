"""Tests of the BF-DnCNN baseline (edm_flax/dncnn.py, edm_flax/train_dncnn.py)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_flax import dncnn
from edm_flax import input_pipeline
from edm_flax import train_dncnn
from edm_flax.configs import dncnn as dncnn_config


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope='module')
def paper_model():
  model = dncnn.BFDnCNN()
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
      jax.random.key(0, impl='rbg'))  # rbg: far cheaper to compile than threefry on CPU
  return model, variables


def test_parameter_count_is_mohans():
  model = dncnn.BFDnCNN()
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))), jax.random.key(0))
  # 3·64·9 + 18·64·64·9 + 64·3·9 convolutions + 18·64 γ (SPEC §8).
  assert count(shapes['params']) == 668_160
  assert count(shapes['batch_stats']) == 18 * 64
  assert not any('bias' in '/'.join(map(str, path))
                 for path, _ in jax.tree_util.tree_flatten_with_path(shapes['params'])[0])


def test_initialisation(paper_model):
  _, variables = paper_model
  params = variables['params']
  gammas = np.concatenate([np.asarray(params[f'bn{i}']['scale']) for i in range(1, 19)])
  assert np.all(np.abs(gammas) <= 0.025 + 1e-9)
  # std 0.059 clipped at 0.025: P(|γ| = 0.025) = P(|N(0,1)| > 0.025/0.0589) ≈ 0.67.
  assert 0.55 < np.mean(np.abs(gammas) >= 0.025 - 1e-7) < 0.8
  w = np.asarray(params['conv5']['kernel'])  # fan_in 9·64: N(0, 2/576), not truncated
  np.testing.assert_allclose(w.std(), np.sqrt(2 / 576), rtol=0.03)
  assert np.abs(w).max() > 2.5 * np.sqrt(2 / 576)
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['running_var'], 1.0)


def test_eval_mode_is_positively_homogeneous(paper_model):
  model, variables = paper_model
  y = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
  # Move the running variances away from 1 with one train-mode pass first.
  _, updated = model.apply(variables, y, train=True, mutable=['batch_stats'])
  variables = {'params': variables['params'], **updated}
  f = jax.jit(lambda v, y: model.apply(v, y, train=False))
  fy = np.asarray(f(variables, y), np.float64)
  for a in (0.5, 3.0):
    np.testing.assert_allclose(f(variables, a * y), a * fy, rtol=1e-4, atol=1e-5 * a)
  # Train mode normalises by the batch std, so it is not homogeneous.
  g = lambda y: model.apply(variables, y, train=True, mutable=['batch_stats'])[0]
  assert np.abs(np.asarray(g(3.0 * y)) - 3.0 * np.asarray(g(y))).max() > 1e-2


def test_bf_batchnorm_train_and_eval_against_numpy():
  x = np.random.default_rng(1).normal(0.7, 2.0, (3, 5, 4, 6))
  bn = dncnn.BFBatchNorm()
  variables = bn.init(jax.random.key(0), jnp.asarray(x, jnp.float32), train=True)
  gamma = np.asarray(variables['params']['scale'], np.float64)
  out, updated = bn.apply(variables, jnp.asarray(x, jnp.float32), train=True,
                          mutable=['batch_stats'])
  var = x.reshape(-1, 6).var(axis=0, ddof=1)  # unbiased, over N, H, W; mean not subtracted
  np.testing.assert_allclose(out, gamma * x / (np.sqrt(var) + 1e-5), rtol=1e-5, atol=1e-6)
  running = updated['batch_stats']['running_var']
  np.testing.assert_allclose(running, 0.9 * 1.0 + 0.1 * var, rtol=1e-5)
  out_eval = bn.apply({'params': variables['params'], **updated}, jnp.asarray(x, jnp.float32),
                      train=False)
  np.testing.assert_allclose(out_eval, gamma * x / (np.sqrt(0.9 + 0.1 * var) + 1e-5),
                             rtol=1e-5, atol=1e-6)


def test_loss_is_mohans():
  rng = np.random.default_rng(2)
  pred, target = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  expected = np.sum((pred - target) ** 2) / (2 * 2)
  np.testing.assert_allclose(dncnn.dncnn_loss(jnp.asarray(pred), jnp.asarray(target)),
                             expected, rtol=1e-6)


@pytest.mark.parametrize('step, lr', [(0, 1e-3), (24_999, 1e-3), (25_000, 5e-4),
                                      (30_000, 2.5e-4), (35_000, 1.25e-4), (39_999, 1.25e-4)])
def test_learning_rate_halves(step, lr):
  schedule = train_dncnn.learning_rate_schedule()
  assert float(schedule(step)) == pytest.approx(lr, rel=1e-6)


def test_train_steps_smoke(tmp_path):
  config = dncnn_config.get_config('tiny')  # 4 steps, lr halves at 2 and 3
  source = input_pipeline.SyntheticPairSource(config.training.batch_size, seed=5)
  state = train_dncnn.train(config, str(tmp_path), source, progress=False)
  assert int(state.step) == 4
  with open(os.path.join(tmp_path, 'stats.jsonl')) as f:
    stats = [json.loads(line) for line in f]
  assert [s['step'] for s in stats] == [1, 2, 3, 4]
  np.testing.assert_allclose([s['lr'] for s in stats], [1e-3, 1e-3, 5e-4, 2.5e-4], rtol=1e-6)
  assert all(np.isfinite(s['loss']) and s['update_norm'] > 0 for s in stats)
  running = np.asarray(state.batch_stats['bn1']['running_var'])
  assert np.all(running != 1.0)  # train mode updated the running variances
  params, batch_stats = train_dncnn.load_dncnn(str(tmp_path), config)
  jax.tree.map(np.testing.assert_array_equal, params, state.params)
  jax.tree.map(np.testing.assert_array_equal, batch_stats, state.batch_stats)
  out = train_dncnn.denoise(train_dncnn.create_model(config), params, batch_stats,
                            next(source)['noisy'])
  assert out.shape == (4, 32, 32, 3) and np.all(np.isfinite(out))
