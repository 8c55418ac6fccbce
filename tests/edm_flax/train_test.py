"""Tests of the EDM restorer training loop (edm_flax/train.py).

All training runs use one micro network (a single 32×32 level, 8 channels), so the step is
compiled once per process and reused (train.get_trainer memoises it).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from edm_flax import input_pipeline
from edm_flax import restore as restore_lib
from edm_flax import train
from edm_flax.configs import default


def micro_config():
  config = default.get_config('tiny')
  config.network.model_channels = 8
  config.network.channel_mult = (1,)
  config.network.num_blocks = 1
  config.network.attn_resolutions = ()
  config.network.channel_mult_emb = 2
  config.training.batch_size = 4
  config.training.lr = 1e-2  # a micro net learns visibly within tens of steps
  config.training.total_img = 16  # 4 steps
  config.training.lr_rampup_img = 8  # full lr from step 2
  config.training.ema_halflife_img = 8
  config.training.log_every_steps = 1
  config.training.ckpt_every_steps = 2
  return config


# ---------------------------------------------------------------------------------------------
# Schedules (SPEC §7.5 anchors, against float64 formulas).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('k', [0, 1, 19531, 19532, 390624])
def test_learning_rate_and_ema_beta_at_spec_steps(k):
  b = 512
  lr_ref = 1e-3 * min(b * k / 1e7, 1.0)
  h = min(500_000.0, 0.05 * b * k)
  beta_ref = 0.5 ** (b / max(h, 1e-8))
  lr = float(train.learning_rate(k, b, lr=1e-3, rampup_img=10e6))
  beta = float(train.ema_beta(k, b, halflife_img=500_000, rampup_ratio=0.05))
  np.testing.assert_allclose(lr, lr_ref, rtol=1e-6, atol=0)
  np.testing.assert_allclose(beta, beta_ref, rtol=1e-6, atol=1e-12)
  if k == 0:
    assert lr == 0.0 and beta == 0.0  # the first step uses lr 0 and sets ema = θ
  if k >= 19532:
    np.testing.assert_allclose(beta, 0.99929047, atol=5e-8)
    assert lr == pytest.approx(1e-3, rel=1e-7)
  if k == 19531:
    assert lr < 1e-3 and beta < 0.99929047


def test_schedules_traced_match_python():
  steps = jnp.array([0, 1, 19531, 19532, 390624], jnp.int32)
  lr = jax.jit(lambda k: train.learning_rate(k, 512))(steps)
  beta = jax.jit(lambda k: train.ema_beta(k, 512))(steps)
  for i, k in enumerate(np.asarray(steps)):
    assert float(lr[i]) == pytest.approx(float(train.learning_rate(int(k), 512)), rel=1e-7)
    assert float(beta[i]) == pytest.approx(float(train.ema_beta(int(k), 512)), rel=1e-7)


def test_nan_to_num_grads():
  tx = train.nan_to_num_grads()
  grads = {'a': jnp.array([1.5, jnp.nan, jnp.inf, -jnp.inf, -2.0]),
           'b': jnp.array([[jnp.nan], [3e6]])}
  state = jax.jit(tx.init)(grads)
  out, _ = jax.jit(tx.update)(grads, state)
  np.testing.assert_array_equal(out['a'], np.array([1.5, 0.0, 1e5, -1e5, -2.0], np.float32))
  np.testing.assert_array_equal(out['b'], np.array([[0.0], [3e6]], np.float32))  # finite: kept


def test_optimizer_survives_nan_gradient_and_ramps_lr():
  config = micro_config()
  tx = train.create_optimizer(config)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  updates, state = tx.update({'w': jnp.array([jnp.nan, 1.0, -1.0])}, state, params)
  np.testing.assert_array_equal(updates['w'], 0.0)  # k = 0: lr 0
  updates, state = tx.update({'w': jnp.array([jnp.nan, 1.0, -1.0])}, state, params)
  assert np.all(np.isfinite(updates['w']))
  # k = 1 with B = 4, rampup 8 img: lr = 1e-2·4/8; Adam's first moves are ±lr·(1 − tiny).
  np.testing.assert_allclose(np.abs(updates['w'][1:]), 0.5e-2, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# The loop: smoke, kill-and-resume, loss goes down.
# ---------------------------------------------------------------------------------------------


def read_stats(workdir):
  with open(os.path.join(workdir, 'stats.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def one_step_run(tmp_path_factory):
  config = micro_config()
  workdir = str(tmp_path_factory.mktemp('one_step'))
  source = input_pipeline.SyntheticPairSource(config.training.batch_size, seed=1)
  state = train.train_and_evaluate(config, workdir, source, num_steps=1, progress=False)
  return config, workdir, state


def test_one_step_smoke(one_step_run):
  config, workdir, state = one_step_run
  assert int(state.step) == 1
  (stats,) = read_stats(workdir)
  for k in ('loss', 'grad_norm', 'param_norm', 'update_norm', 'lr', 'img_per_sec'):
    assert np.isfinite(stats[k]), k
  # Step k = 0 has lr 0 and β = 0: θ does not move and the EMA equals θ.
  assert stats['lr'] == 0.0 and stats['update_norm'] == 0.0 and stats['ema_beta'] == 0.0
  assert stats['grad_norm'] > 0.0 and stats['loss'] > 0.0
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
  # The checkpoint holds the EMA parameters and the config.
  ema = train.load_ema_params(workdir, config)
  jax.tree.map(np.testing.assert_array_equal, ema, state.ema_params)
  assert train.load_config(workdir).network.model_channels == 8


def test_restore_files_from_checkpoint(one_step_run, tmp_path):
  _, workdir, _ = one_step_run
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  np.savez(tmp_path / 'recons.npz', images=images)
  out_dir = tmp_path / 'restored'
  result = restore_lib.restore_files(workdir, str(tmp_path / 'recons.npz'), str(out_dir),
                                     num_samples=2, batch_size=4, num_steps=2)
  assert result['mean'].shape == (3, 32, 32, 3) and np.all(result['spread'] > 0)
  assert sorted(os.listdir(out_dir)) == ['00000.png', '00001.png', '00002.png', 'grid.png',
                                         'restored.npz']
  png = np.asarray(Image.open(out_dir / '00001.png'))
  np.testing.assert_array_equal(png, np.round(result['mean'][1] * 255).astype(np.uint8))
  grid = np.asarray(Image.open(out_dir / 'grid.png'))
  assert grid.shape == (2 * 34, 3 * 34, 3)  # rows input / restored, 2 px gaps
  np.testing.assert_array_equal(grid[:32, :32], images[0])


class SimulatedKill(Exception):
  """Stands in for the job being killed (not KeyboardInterrupt, which would stop pytest)."""


class KilledSource:
  """Wraps a source and dies (like a killed job) when asked for batch number `die_at`."""

  def __init__(self, source, die_at):
    self.source, self.die_at, self.served = source, die_at, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.served == self.die_at:
      raise SimulatedKill(f'killed at batch {self.die_at}')
    self.served += 1
    return next(self.source)

  def get_state(self):
    return self.source.get_state()

  def set_state(self, state):
    self.source.set_state(state)


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
  config = micro_config()  # 4 steps, checkpoints every 2
  batch_size = config.training.batch_size
  straight = train.train_and_evaluate(
      config, str(tmp_path / 'straight'), input_pipeline.SyntheticPairSource(batch_size),
      progress=False)

  workdir = str(tmp_path / 'resumed')
  with pytest.raises(SimulatedKill):  # dies while fetching batch 3: step 3 is lost
    train.train_and_evaluate(
        config, workdir, KilledSource(input_pipeline.SyntheticPairSource(batch_size), 3),
        progress=False)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  fresh_source = input_pipeline.SyntheticPairSource(batch_size)  # a new process's iterator
  resumed = train.train_and_evaluate(config, workdir, fresh_source, progress=False)

  assert int(resumed.step) == int(straight.step) == 4
  assert fresh_source.get_state()['index'] == 4  # restored at 2, then 2 more batches
  for name in ('params', 'ema_params', 'opt_state', 'rng'):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(straight, name))
  # The parameters did move, so the equality is not vacuous.
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                       straight.params, straight.ema_params))
  assert max(moved) > 0


def test_training_lowers_the_loss(tmp_path):
  config = micro_config()
  config.training.total_img = 4 * 30  # 30 steps
  config.training.ckpt_every_steps = 1000
  config.training.log_every_steps = 1000
  source = input_pipeline.SyntheticPairSource(config.training.batch_size, seed=3)
  held_out = input_pipeline.SyntheticPairSource(64, seed=99)
  batch = next(held_out)
  mesh = train.make_mesh()
  trainer = train.get_trainer(config, mesh)
  eval_fn = jax.jit(lambda p, b: train.eval_step(p, b, jax.random.key(7), model=trainer.model,
                                                 config=config))
  before = float(eval_fn(trainer.init_fn(train.make_rng(config.training.seed, config)).params,
                         batch))
  state = train.train_and_evaluate(config, str(tmp_path), source, progress=False)
  after = float(eval_fn(state.params, batch))
  print(f'held-out loss {before:.1f} -> {after:.1f} ({after / before:.3f})')
  assert after < 0.85 * before, (before, after)  # typically ≈ 0.75


def test_bad_batch_raises_value_error(tmp_path):
  config = micro_config()
  bad = iter([{'noisy': np.zeros((4, 32, 32, 3)), 'clean': np.zeros((4, 32, 32, 3))}])
  with pytest.raises(ValueError, match='aug_labels'):
    train.train_and_evaluate(config, str(tmp_path), bad, progress=False)


def test_load_ema_params_without_checkpoint_raises(tmp_path):
  with pytest.raises(ValueError, match='no checkpoint'):
    train.load_ema_params(str(tmp_path), micro_config())


def test_metrics_go_to_tensorboard(one_step_run):
  _, workdir, _ = one_step_run
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert any(e.startswith('events.out.tfevents') for e in events), events
