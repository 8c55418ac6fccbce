"""Tests of edm_flax.networks (SongUNet / DDPM++) against SPEC §7 and a NumPy reference."""

import time

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_flax import convert
from edm_flax import networks
from edm_flax import precond
from edm_flax.configs import default


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _net(variant, **overrides):
  kwargs = dict(default.get_config(variant).network)
  kwargs.update(overrides)
  kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return networks.SongUNet(**kwargs)


@pytest.fixture(scope="module")
def tiny():
  net = _net("tiny")
  x = jnp.zeros((2, 32, 32, 6))
  # An 'rbg' key: same distributions, but compiles several times faster than threefry on CPU.
  params = jax.jit(net.init)(_key(0), x, jnp.zeros((2,)))["params"]
  return net, params


@pytest.fixture(scope="module")
def tiny_apply(tiny):
  """Jitted eval-mode forward of the tiny net, shared to compile once."""
  net, _ = tiny
  return jax.jit(lambda p, x, n, a: net.apply({"params": p}, x, n, a))


@pytest.mark.parametrize("in_channels,expected", [(6, 55_737_347), (3, 55_733_891)])
def test_cifar_parameter_count(in_channels, expected):
  shapes = convert.flax_param_shapes(_net("cifar", in_channels=in_channels))
  assert networks.count_params(shapes) == expected


def test_cifar_module_inventory():
  params = convert.flax_param_shapes(_net("cifar"))
  attn = [k for k, v in params.items() if isinstance(v, dict) and "qkv" in v]
  # SPEC §7.2: 6 attention layers; 15 encoder skips; block4 of 32x32 sees 256 + 128 channels.
  assert sorted(attn) == sorted(["enc_16x16_block0", "enc_16x16_block1", "enc_16x16_block2",
                                 "enc_16x16_block3", "dec_8x8_in0", "dec_16x16_block4"])
  assert len([k for k in params if k.startswith("enc_")]) == 15
  assert params["dec_32x32_block4"]["conv0"]["kernel"].shape == (3, 3, 384, 256)
  assert params["dec_8x8_block0"]["conv0"]["kernel"].shape == (3, 3, 512, 256)
  assert params["enc_32x32_conv"]["kernel"].shape == (3, 3, 6, 128)
  assert "bias" not in params["map_augment"]
  assert params["dec_32x32_aux_conv"]["kernel"].shape == (3, 3, 256, 3)


def test_positional_embedding_anchors():
  emb = np.asarray(networks.positional_embedding(jnp.array([0.0, 1.0]), 128))
  np.testing.assert_array_equal(emb[0, :64], 0.0)
  np.testing.assert_array_equal(emb[0, 64:], 1.0)
  np.testing.assert_allclose(emb[1, 0], 0.8414710, atol=1e-7)
  np.testing.assert_allclose(emb[1, 64], 0.5403023, atol=1e-7)
  c = np.array([-1.55, 0.3, 1.1])
  f = (1 / 10000) ** (np.arange(64) / 63)
  want = np.concatenate([np.sin(c[:, None] * f), np.cos(c[:, None] * f)], axis=1)
  got = networks.positional_embedding(jnp.asarray(c, jnp.float32), 128)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("filt", [(1, 1), (1, 3, 3, 1)])
def test_resampling_matches_filter_definition(filt):
  x = np.random.default_rng(0).standard_normal((1, 8, 8, 2))
  f1 = np.asarray(filt, float) / np.sum(filt)
  # Down: correlate with outer(f,f)/sum² at stride 2, zero padding (k−1)//2 (EDM's conv2d).
  k, pad = len(filt), (len(filt) - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  down = np.zeros((1, 4, 4, 2))
  for i in range(4):
    for j in range(4):
      win = xp[:, 2 * i:2 * i + k, 2 * j:2 * j + k]
      down[:, i, j] = np.einsum("bhwc,h,w->bc", win, f1, f1)
  np.testing.assert_allclose(networks.downsample(jnp.asarray(x, jnp.float32), filt), down,
                             atol=1e-5)
  # Up: scatter each pixel with 4·outer(f,f) at stride 2 and crop `pad` (EDM's conv_transpose2d).
  full = np.zeros((1, 2 * 8 + k - 2, 2 * 8 + k - 2, 2))
  for i in range(8):
    for j in range(8):
      full[:, 2 * i:2 * i + k, 2 * j:2 * j + k] += 4 * np.einsum(
          "bc,h,w->bhwc", x[:, i, j], f1, f1)
  up = full[:, pad:pad + 16, pad:pad + 16]
  np.testing.assert_allclose(networks.upsample(jnp.asarray(x, jnp.float32), filt), up, atol=1e-5)
  if filt == (1, 1):  # SPEC: 2×2 mean pooling and nearest-neighbour ×2
    np.testing.assert_allclose(down, x.reshape(1, 4, 2, 4, 2, 2).mean((2, 4)), atol=1e-12)
    np.testing.assert_allclose(up, x.repeat(2, 1).repeat(2, 2), atol=1e-12)


def test_init_distributions(tiny):
  _, params = tiny
  flat = flax.traverse_util.flatten_dict(params)
  for path, v in flat.items():
    v = np.asarray(v)
    if path[-1] == "bias":
      np.testing.assert_array_equal(v, 0.0)
    elif path[-1] == "scale":
      np.testing.assert_array_equal(v, 1.0)
    else:  # xavier-uniform × multiplier, fans C·k²
      rf = int(np.prod(v.shape[:-2]))
      bound = np.sqrt(6 / (v.shape[-2] * rf + v.shape[-1] * rf))
      mult = {"conv1": 1e-5, "proj": 1e-5, "qkv": np.sqrt(0.2)}.get(path[-2], 1.0)
      if path[0].endswith("aux_conv"):
        mult = 1e-5
      assert np.abs(v).max() <= mult * bound * (1 + 1e-6), path
      if v.size >= 256:  # uniform: the max is close to the bound, the std is bound/√3
        assert np.abs(v).max() > 0.9 * mult * bound, path
        np.testing.assert_allclose(v.std(), mult * bound / np.sqrt(3), rtol=0.15)


def test_init_denoiser_is_c_skip_times_x(tiny):
  net, params = tiny
  model = precond.EDMPrecond(model=net)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)) * 2, jnp.float32)
  cond = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  sigma = jnp.array([0.05, 5.0])
  d = jax.jit(model.apply)({"params": {"model": params}}, x, sigma, cond)
  c_skip = 0.25 / (np.asarray(sigma)**2 + 0.25)
  np.testing.assert_allclose(d, c_skip[:, None, None, None] * np.asarray(x), atol=1e-4)


def test_tiny_forward_is_fast_and_uses_dropout(tiny, tiny_apply):
  net, params = tiny
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 6)), jnp.float32)
  f = jax.jit(lambda p, x, n, a, k: net.apply({"params": p}, x, n, a, train=True,
                                               rngs={"dropout": k}))
  aug = jnp.ones((2, 9))
  jax.block_until_ready(f(params, x, jnp.zeros((2,)), aug, _key(0)))
  start = time.process_time()  # CPU seconds: robust to other jobs sharing the machine
  out = jax.block_until_ready(f(params, x, jnp.zeros((2,)), aug, _key(0)))
  assert time.process_time() - start < 1.0
  assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()
  eval_out = tiny_apply(params, x, jnp.zeros((2,)), aug)
  assert not np.allclose(out, eval_out, atol=0, rtol=0)  # dropout changes the training output
  with pytest.raises(ValueError, match="x must be"):
    net.apply({"params": params}, x[..., :3], jnp.zeros((2,)))


# ---------------------------------------------------------------------------------------------
# Independent float64 NumPy reference of EDM's SongUNet (NCHW, EDM weight layout), from SPEC §7.2.


def _np_conv(x, w, b=None):
  """x [B,I,H,W], w [O,I,k,k] OIHW, zero 'same' padding for odd k."""
  k = w.shape[-1]
  p = k // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  h, wd = x.shape[2:]
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for i in range(k):
    for j in range(k):
      out += np.einsum("bihw,oi->bohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
  return out if b is None else out + b[None, :, None, None]


def _np_gn(x, w, b):
  c = x.shape[1]
  g = min(32, c // 4)
  xr = x.reshape(x.shape[0], g, c // g, *x.shape[2:])
  mean = xr.mean(axis=(2, 3, 4), keepdims=True)
  var = ((xr - mean)**2).mean(axis=(2, 3, 4), keepdims=True)
  xr = (xr - mean) / np.sqrt(var + 1e-6)
  return xr.reshape(x.shape) * w[None, :, None, None] + b[None, :, None, None]


def _silu(x):
  return x / (1 + np.exp(-x))


def _np_block(sd, name, x, emb, up=False, down=False, attention=False):
  g = lambda k: sd[f"{name}.{k}"]
  resample = lambda t: (t.repeat(2, 2).repeat(2, 3) if up else
                        t.reshape(t.shape[0], t.shape[1], t.shape[2] // 2, 2, t.shape[3] // 2, 2)
                        .mean((3, 5)) if down else t)
  orig = x
  h = _np_conv(resample(_silu(_np_gn(x, g("norm0.weight"), g("norm0.bias")))),
               g("conv0.weight"), g("conv0.bias"))
  h = h + (emb @ g("affine.weight").T + g("affine.bias"))[:, :, None, None]
  h = _silu(_np_gn(h, g("norm1.weight"), g("norm1.bias")))
  h = _np_conv(h, g("conv1.weight"), g("conv1.bias"))
  if f"{name}.skip.weight" in sd:
    orig = _np_conv(resample(orig), g("skip.weight"), g("skip.bias"))
  x = (h + orig) * np.sqrt(0.5)
  if attention:
    b, c, hh, ww = x.shape
    qkv = _np_conv(_np_gn(x, g("norm2.weight"), g("norm2.bias")), g("qkv.weight"), g("qkv.bias"))
    qkv = qkv.reshape(b, c, 3, hh * ww)  # EDM: output channel 3c + j holds q, k, v
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = np.einsum("ncq,nck->nqk", q, k / np.sqrt(c))
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    a = np.einsum("nqk,nck->ncq", w, v).reshape(x.shape)
    x = (_np_conv(a, g("proj.weight"), g("proj.bias")) + x) * np.sqrt(0.5)
  return x


def _np_song_unet(sd, x, noise_labels, aug, channel_mult, num_blocks, attn_res):
  f = (1 / 10000) ** (np.arange(8) / 7)
  emb = np.concatenate([np.sin(noise_labels[:, None] * f), np.cos(noise_labels[:, None] * f)], 1)
  emb = emb + aug @ sd["map_augment.weight"].T
  emb = _silu(emb @ sd["map_layer0.weight"].T + sd["map_layer0.bias"])
  emb = _silu(emb @ sd["map_layer1.weight"].T + sd["map_layer1.bias"])
  skips = []
  for level in range(len(channel_mult)):
    res = 32 >> level
    if level == 0:
      x = _np_conv(x, sd[f"enc.{res}x{res}_conv.weight"], sd[f"enc.{res}x{res}_conv.bias"])
    else:
      x = _np_block(sd, f"enc.{res}x{res}_down", x, emb, down=True)
    skips.append(x)
    for i in range(num_blocks):
      x = _np_block(sd, f"enc.{res}x{res}_block{i}", x, emb, attention=res in attn_res)
      skips.append(x)
  for level in reversed(range(len(channel_mult))):
    res = 32 >> level
    if level == len(channel_mult) - 1:
      x = _np_block(sd, f"dec.{res}x{res}_in0", x, emb, attention=True)
      x = _np_block(sd, f"dec.{res}x{res}_in1", x, emb)
    else:
      x = _np_block(sd, f"dec.{res}x{res}_up", x, emb, up=True)
    for i in range(num_blocks + 1):
      x = np.concatenate([x, skips.pop()], axis=1)
      x = _np_block(sd, f"dec.{res}x{res}_block{i}", x, emb,
                    attention=i == num_blocks and res in attn_res)
  x = _silu(_np_gn(x, sd["dec.32x32_aux_norm.weight"], sd["dec.32x32_aux_norm.bias"]))
  return _np_conv(x, sd["dec.32x32_aux_conv.weight"], sd["dec.32x32_aux_conv.bias"])


def test_tiny_matches_numpy_reference_with_random_weights(tiny, tiny_apply):
  net, params = tiny
  rng = np.random.default_rng(3)
  # Random O(1) weights so that every layer (incl. the near-zero-initialised ones) matters.
  flat = flax.traverse_util.flatten_dict(params)
  rand = {}
  for path, v in flat.items():
    if path[-1] == "kernel":
      fan_in = int(np.prod(v.shape[:-1]))
      rand[path] = rng.standard_normal(v.shape) / np.sqrt(fan_in)
    elif path[-1] == "scale":
      rand[path] = 1 + 0.2 * rng.standard_normal(v.shape)
    else:
      rand[path] = 0.2 * rng.standard_normal(v.shape)
  rand = flax.traverse_util.unflatten_dict(rand)
  sd = convert.flax_to_torch_state_dict(rand, net)
  x = rng.standard_normal((2, 6, 32, 32))
  noise = np.array([-1.3, 0.7])
  aug = rng.standard_normal((2, 9))
  want = _np_song_unet(sd, x, noise, aug, (1, 2), 1, (16,))
  got = tiny_apply(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), rand),
                   jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32),
                   jnp.asarray(noise, jnp.float32), jnp.asarray(aug, jnp.float32))
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
