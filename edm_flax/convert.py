"""Weight conversion between EDM's PyTorch `SongUNet` state dicts and `edm_flax` params.

Name mapping (EDM -> Flax):
  - `enc.32x32_block0` -> `enc_32x32_block0` and `dec.16x16_up` -> `dec_16x16_up`; every other
    module key is unchanged (`map_layer0`, `conv0`, `affine`, `qkv`, …).
  - Leaves: Linear `weight` [out, in] -> `kernel` [in, out]; Conv2d `weight` OIHW -> `kernel`
    HWIO; GroupNorm `weight` -> `scale`; `bias` -> `bias`.
  - `qkv`: EDM interleaves the 3C output channels (channel 3c + j for j = q, k, v); Flax stores
    [q | k | v] blocks.
  - EDM's `resample_filter` buffers (conv0/skip of up/down blocks) are constants in Flax: they
    are checked on import and written on export so `load_state_dict(strict=True)` works.
  - A state dict of EDM's `EDMPrecond` (keys `model.…`) maps to `{"model": SongUNet params}`,
    the params of `edm_flax.precond.EDMPrecond`, and back.

References:
  NVlabs/edm@62072d2, `training/networks.py`.
"""

import os
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from edm_flax import networks

_PRECOND_PREFIX = "model."


def _song_unet(config) -> networks.SongUNet:
  """A SongUNet from a full config (with `.network`), a network dict, or a SongUNet."""
  if isinstance(config, networks.SongUNet):
    return config
  net = config["network"] if "network" in config else config
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(net).items()}
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return networks.SongUNet(**kwargs)


def flax_param_shapes(config) -> dict[str, Any]:
  """Abstract SongUNet params (ShapeDtypeStructs) via `jax.eval_shape`; nothing is allocated."""
  model = _song_unet(config)
  r, c = model.img_resolution, model.in_channels
  args = [jnp.zeros((1, r, r, c), jnp.float32), jnp.zeros((1,), jnp.float32)]
  kwargs = {}
  if model.label_dim:
    kwargs["class_labels"] = jnp.zeros((1, model.label_dim), jnp.float32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *args, **kwargs))
  return shapes["params"]


def _torch_module(flax_module: str) -> str:
  if flax_module.startswith(("enc_", "dec_")):
    return flax_module[:3] + "." + flax_module[4:]
  return flax_module


def _flax_module(torch_module: str) -> str:
  if torch_module.startswith(("enc.", "dec.")):
    return torch_module[:3] + "_" + torch_module[4:]
  return torch_module


def _torch_key(path: tuple[str, ...]) -> str:
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
  return ".".join((_torch_module(path[0]),) + tuple(path[1:-1]) + (leaf,))


def _resample_buffers(flat_paths, resample_filter) -> dict[str, np.ndarray]:
  """EDM's `resample_filter` buffers [1, 1, k, k] of the conv0/skip layers of up/down blocks."""
  f = networks.resample_kernel(resample_filter).astype(np.float32)[None, None]
  out = {}
  for path in flat_paths:
    block = path[0]
    if (block.endswith("_down") or block.endswith("_up")) and path[1] in ("conv0", "skip"):
      out[".".join((_torch_module(block), path[1], "resample_filter"))] = f
  return out


def _interleave(x: np.ndarray) -> np.ndarray:
  """[q | k | v] blocks along axis 0 -> EDM's interleaved order (3c + j)."""
  c = x.shape[0] // 3
  return x.reshape((3, c) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)


def _deinterleave(x: np.ndarray) -> np.ndarray:
  """EDM's interleaved order (3c + j) along axis 0 -> [q | k | v] blocks."""
  c = x.shape[0] // 3
  return x.reshape((c, 3) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if path[-2] == "qkv":
    value = _interleave(value)
  return value


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-2] == "qkv":
    value = _deinterleave(value)
  if path[-1] == "kernel":
    value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """[in, out] -> [out, in] and HWIO -> OIHW; vectors are unchanged."""
  if len(flax_shape) == 2:
    return flax_shape[::-1]
  if len(flax_shape) == 4:
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  return flax_shape


def expected_torch_shapes(config) -> dict[str, tuple[int, ...]]:
  """EDM SongUNet state-dict keys and shapes (parameters and buffers) implied by `config`."""
  model = _song_unet(config)
  flat = flax.traverse_util.flatten_dict(flax_param_shapes(model))
  shapes = {}
  for path, leaf in flat.items():
    shapes[_torch_key(path)] = _torch_shape(tuple(leaf.shape))
  for key, buf in _resample_buffers(flat, model.resample_filter).items():
    shapes[key] = buf.shape
  return shapes


def _unwrap(params) -> tuple[dict, bool]:
  """Returns (SongUNet params, whether they were wrapped as EDMPrecond's {'model': …})."""
  params = dict(params)
  if set(params) == {"params"}:
    params = dict(params["params"])
  if set(params) == {"model"}:
    return dict(params["model"]), True
  return params, False


def flax_to_torch_state_dict(params, config) -> dict[str, np.ndarray]:
  """Flax SongUNet (or EDMPrecond) params -> EDM state dict of NumPy arrays.

  Args:
    params: SongUNet params, or EDMPrecond params `{"model": …}` (optionally inside
      `{"params": …}`).
    config: full config (with `.network`), network fields, or a SongUNet.

  Returns:
    {EDM key: array}, including the `resample_filter` buffers; keys start with `model.` when
    `params` were EDMPrecond's.
  """
  model = _song_unet(config)
  inner, wrapped = _unwrap(params)
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(inner).items()}
  expected = flax.traverse_util.flatten_dict(flax_param_shapes(model))
  _check_same(set(flat), set(expected), "flax params", lambda p: "/".join(p))
  out = {}
  for path, value in flat.items():
    if value.shape != tuple(expected[path].shape):
      raise ValueError(f"flax_to_torch_state_dict: {'/'.join(path)} has shape {value.shape}, "
                       f"expected {tuple(expected[path].shape)}.")
    out[_torch_key(path)] = _to_torch(path, value)
  out.update(_resample_buffers(flat, model.resample_filter))
  if wrapped:
    out = {_PRECOND_PREFIX + k: v for k, v in out.items()}
  return out


def torch_state_dict_to_flax(state_dict: dict[str, np.ndarray], config, *,
                             dtype=np.float32) -> dict[str, Any]:
  """EDM SongUNet (or EDMPrecond) state dict -> Flax params.

  Args:
    state_dict: {EDM key: array-like} (torch tensors are accepted if they support
      `np.asarray`, i.e. CPU tensors).
    config: full config (with `.network`), network fields, or a SongUNet.
    dtype: dtype of the returned arrays (None keeps the source dtype).

  Returns:
    Nested dict of NumPy arrays: SongUNet params, or `{"model": …}` when the keys carry EDM's
    EDMPrecond prefix `model.`.

  Raises:
    ValueError: on missing/unexpected keys, a wrong shape or a different resampling filter.
  """
  model = _song_unet(config)
  keys = list(state_dict)
  wrapped = bool(keys) and all(k.startswith(_PRECOND_PREFIX) for k in keys)
  if wrapped:
    state_dict = {k[len(_PRECOND_PREFIX):]: v for k, v in state_dict.items()}
  expected = flax.traverse_util.flatten_dict(flax_param_shapes(model))
  by_torch_key = {_torch_key(p): p for p in expected}
  buffers = _resample_buffers(expected, model.resample_filter)
  _check_same(set(state_dict), set(by_torch_key) | set(buffers), "state_dict", str)
  flat = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    if key in buffers:
      if not np.allclose(value, buffers[key]):
        raise ValueError(f"torch_state_dict_to_flax: {key} differs from the filter "
                         f"{model.resample_filter} of the config.")
      continue
    path = by_torch_key[key]
    want = _torch_shape(tuple(expected[path].shape))
    if value.shape != want:
      raise ValueError(f"torch_state_dict_to_flax: {key} has shape {value.shape}, expected {want}.")
    value = _to_flax(path, value)
    flat[path] = value if dtype is None else value.astype(dtype)
  params = flax.traverse_util.unflatten_dict(flat)
  return {"model": params} if wrapped else params


def _check_same(got: set, want: set, what: str, fmt) -> None:
  missing, unexpected = sorted(want - got), sorted(got - want)
  if missing or unexpected:
    raise ValueError(f"{what}: missing {[fmt(k) for k in missing[:5]]}"
                     f"{' …' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
                     f"{[fmt(k) for k in unexpected[:5]]}{' …' if len(unexpected) > 5 else ''} "
                     f"({len(unexpected)}).")


def save_state_dict(path: str, state_dict: dict[str, np.ndarray]) -> None:
  """Writes an EDM-style state dict as `.npz`, or `.pt` (torch.save; needs torch)."""
  if path.endswith(".npz"):
    np.savez(path, **state_dict)
  elif path.endswith(".pt"):
    torch = _import_torch()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
               path)
  else:
    raise ValueError(f"save_state_dict: unsupported extension of {path!r} (use .npz or .pt).")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads an EDM-style state dict from `.npz`, or `.pt` (torch.load; needs torch)."""
  if not os.path.exists(path):
    raise ValueError(f"load_state_dict: no file {path!r}.")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if path.endswith(".pt"):
    torch = _import_torch()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}
  raise ValueError(f"load_state_dict: unsupported extension of {path!r} (use .npz or .pt).")


def load_flax_params(path: str, config, *, dtype=np.float32) -> dict[str, Any]:
  """Loads an EDM state dict file (.npz/.pt) and converts it to Flax params."""
  return torch_state_dict_to_flax(load_state_dict(path), config, dtype=dtype)


def save_flax_params(path: str, params, config) -> None:
  """Converts Flax params to an EDM state dict and writes it (.npz/.pt)."""
  save_state_dict(path, flax_to_torch_state_dict(params, config))


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading or writing .pt files needs torch "
                      "(pip install torch==2.13.0).") from e
  return torch
