"""Tests of edm_flax.convert (EDM state dict <-> Flax params)."""

import flax.traverse_util
import jax
import numpy as np
import pytest

from edm_flax import convert
from edm_flax import networks
from edm_flax.configs import default


def _random_params(config, seed=0):
  shapes = convert.flax_param_shapes(config)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _edm_block(keys, name, cin, cout, emb, up_down=False, attention=False):
  """EDM UNetBlock state-dict entries (DDPM++: adaptive_scale off, resample_proj on)."""
  keys[f"{name}.norm0.weight"] = keys[f"{name}.norm0.bias"] = (cin,)
  keys[f"{name}.conv0.weight"], keys[f"{name}.conv0.bias"] = (cout, cin, 3, 3), (cout,)
  keys[f"{name}.affine.weight"], keys[f"{name}.affine.bias"] = (cout, emb), (cout,)
  keys[f"{name}.norm1.weight"] = keys[f"{name}.norm1.bias"] = (cout,)
  keys[f"{name}.conv1.weight"], keys[f"{name}.conv1.bias"] = (cout, cout, 3, 3), (cout,)
  if cin != cout or up_down:
    keys[f"{name}.skip.weight"], keys[f"{name}.skip.bias"] = (cout, cin, 1, 1), (cout,)
  if up_down:
    keys[f"{name}.conv0.resample_filter"] = keys[f"{name}.skip.resample_filter"] = (1, 1, 2, 2)
  if attention:
    keys[f"{name}.norm2.weight"] = keys[f"{name}.norm2.bias"] = (cout,)
    keys[f"{name}.qkv.weight"], keys[f"{name}.qkv.bias"] = (3 * cout, cout, 1, 1), (3 * cout,)
    keys[f"{name}.proj.weight"], keys[f"{name}.proj.bias"] = (cout, cout, 1, 1), (cout,)


def _edm_cifar_keys(in_channels=6):
  """EDM's SongUNet state-dict keys/shapes for the paper's config, written out from SPEC §7.2."""
  keys = {"map_augment.weight": (128, 9), "map_layer0.weight": (512, 128),
          "map_layer0.bias": (512,), "map_layer1.weight": (512, 512), "map_layer1.bias": (512,),
          "enc.32x32_conv.weight": (128, in_channels, 3, 3), "enc.32x32_conv.bias": (128,)}
  _edm_block(keys, "enc.32x32_block0", 128, 256, 512)
  for i in (1, 2, 3):
    _edm_block(keys, f"enc.32x32_block{i}", 256, 256, 512)
  for res in (16, 8):
    _edm_block(keys, f"enc.{res}x{res}_down", 256, 256, 512, up_down=True)
    for i in range(4):
      _edm_block(keys, f"enc.{res}x{res}_block{i}", 256, 256, 512, attention=res == 16)
  _edm_block(keys, "dec.8x8_in0", 256, 256, 512, attention=True)
  _edm_block(keys, "dec.8x8_in1", 256, 256, 512)
  for res in (8, 16, 32):
    if res != 8:
      _edm_block(keys, f"dec.{res}x{res}_up", 256, 256, 512, up_down=True)
    for i in range(5):
      cin = 384 if (res, i) == (32, 4) else 512
      _edm_block(keys, f"dec.{res}x{res}_block{i}", cin, 256, 512,
                 attention=res == 16 and i == 4)
  keys["dec.32x32_aux_norm.weight"] = keys["dec.32x32_aux_norm.bias"] = (256,)
  keys["dec.32x32_aux_conv.weight"], keys["dec.32x32_aux_conv.bias"] = (3, 256, 3, 3), (3,)
  return keys


@pytest.mark.parametrize("in_channels", [6, 3])
def test_cifar_key_set_matches_edm_naming(in_channels):
  config = default.get_config("cifar")
  config.network.in_channels = in_channels
  want = _edm_cifar_keys(in_channels)
  got = convert.expected_torch_shapes(config)
  assert set(got) == set(want)
  assert got == want
  n_params = sum(np.prod(s) for k, s in want.items() if not k.endswith("resample_filter"))
  assert n_params == {6: 55_737_347, 3: 55_733_891}[in_channels]


def test_round_trip_tiny():
  config = default.get_config("tiny")
  params = _random_params(config)
  sd = convert.flax_to_torch_state_dict(params, config)
  assert set(sd) == set(convert.expected_torch_shapes(config))
  assert sd["enc.32x32_conv.weight"].shape == (16, 6, 3, 3)
  assert sd["map_layer0.weight"].shape == (64, 16)
  np.testing.assert_array_equal(sd["enc.16x16_down.conv0.resample_filter"],
                                np.full((1, 1, 2, 2), 0.25, np.float32))
  back = convert.torch_state_dict_to_flax(sd, config)
  flat_a = flax.traverse_util.flatten_dict(params)
  flat_b = flax.traverse_util.flatten_dict(back)
  assert set(flat_a) == set(flat_b)
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k])
  sd2 = convert.flax_to_torch_state_dict(back, config)
  for k in sd:
    np.testing.assert_array_equal(sd[k], sd2[k])


def test_layouts():
  config = default.get_config("tiny")
  params = _random_params(config, seed=1)
  sd = convert.flax_to_torch_state_dict(params, config)
  blk = params["enc_16x16_block0"]
  # Conv HWIO -> OIHW, Dense [in, out] -> [out, in], GroupNorm scale -> weight.
  np.testing.assert_array_equal(sd["enc.16x16_block0.conv0.weight"][5, 7, 2, 1],
                                blk["conv0"]["kernel"][2, 1, 7, 5])
  np.testing.assert_array_equal(sd["enc.16x16_block0.affine.weight"][3, 9],
                                blk["affine"]["kernel"][9, 3])
  np.testing.assert_array_equal(sd["enc.16x16_block0.norm2.weight"], blk["norm2"]["scale"])
  # qkv: Flax [q | k | v] blocks of C = 32; EDM channel 3c + j.
  c = 32
  for j in range(3):
    for ch in (0, 5, 31):
      np.testing.assert_array_equal(sd["enc.16x16_block0.qkv.weight"][3 * ch + j, :, 0, 0],
                                    blk["qkv"]["kernel"][0, 0, :, j * c + ch])
      assert sd["enc.16x16_block0.qkv.bias"][3 * ch + j] == blk["qkv"]["bias"][j * c + ch]


def test_precond_prefix_round_trip():
  config = default.get_config("tiny")
  params = {"model": _random_params(config, seed=2)}
  sd = convert.flax_to_torch_state_dict({"params": params}, config)
  assert all(k.startswith("model.") for k in sd) and "model.map_augment.weight" in sd
  back = convert.torch_state_dict_to_flax(sd, config)
  assert set(back) == {"model"}
  np.testing.assert_array_equal(back["model"]["map_layer1"]["bias"],
                                params["model"]["map_layer1"]["bias"])


def test_mismatches_raise_value_error():
  config = default.get_config("tiny")
  sd = convert.flax_to_torch_state_dict(_random_params(config), config)
  missing = dict(sd)
  del missing["dec.32x32_aux_conv.bias"]
  with pytest.raises(ValueError, match=r"missing \['dec\.32x32_aux_conv\.bias'\]"):
    convert.torch_state_dict_to_flax(missing, config)
  extra = dict(sd, **{"map_label.weight": np.zeros((16, 10))})
  with pytest.raises(ValueError, match=r"unexpected \['map_label\.weight'\]"):
    convert.torch_state_dict_to_flax(extra, config)
  bad = dict(sd, **{"map_layer0.weight": np.zeros((64, 17))})
  with pytest.raises(ValueError, match="shape"):
    convert.torch_state_dict_to_flax(bad, config)
  bad_filter = dict(sd, **{"enc.16x16_down.skip.resample_filter": np.ones((1, 1, 2, 2))})
  with pytest.raises(ValueError, match="filter"):
    convert.torch_state_dict_to_flax(bad_filter, config)


def test_npz_and_pt_files(tmp_path):
  config = default.get_config("tiny")
  params = _random_params(config, seed=3)
  path = str(tmp_path / "w.npz")
  convert.save_flax_params(path, params, config)
  back = convert.load_flax_params(path, config)
  np.testing.assert_array_equal(back["dec_16x16_in0"]["qkv"]["kernel"],
                                params["dec_16x16_in0"]["qkv"]["kernel"])
  with pytest.raises(ValueError, match="extension"):
    convert.save_flax_params(str(tmp_path / "w.bin"), params, config)
  torch = pytest.importorskip("torch")
  path = str(tmp_path / "w.pt")
  convert.save_flax_params(path, params, config)
  sd = torch.load(path, weights_only=True)
  assert isinstance(sd["map_layer0.weight"], torch.Tensor)
  back = convert.load_flax_params(path, config)
  np.testing.assert_array_equal(back["dec_16x16_in0"]["qkv"]["bias"],
                                params["dec_16x16_in0"]["qkv"]["bias"])


def test_accepts_network_fields_or_module():
  config = default.get_config("tiny")
  net = networks.SongUNet(model_channels=16, channel_mult=(1, 2), num_blocks=1)
  assert (convert.expected_torch_shapes(net) == convert.expected_torch_shapes(config.network)
          == convert.expected_torch_shapes(config))
