r"""Parity of edm_flax's SongUNet / EDMPrecond with EDM's own PyTorch network.

Not part of the test suite: it needs torch (`pip install torch==2.13.0`) and a local checkout of
NVlabs/edm@62072d2 (outside this repository), e.g.

  git clone https://github.com/NVlabs/edm /tmp/edm && git -C /tmp/edm checkout 62072d2
  python -m benchmarks.edm_parity --edm_dir=/tmp/edm   # or: --configs=tiny --nofloat64

For each config it builds EDM's `SongUNet` with the same fields, converts its weights with
`edm_flax.convert.torch_state_dict_to_flax`, runs both in eval mode on the same inputs and prints
the largest absolute output difference. Two weight sets are compared: EDM's own initialisation
(whose zero-ish output layers make F tiny) and a randomised one (every tensor redrawn at O(1)
output scale) that exercises every layer. Runs in float32 with 'highest' matmul precision and,
with --float64, in float64.
"""

import json
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

_EDM_DIR = flags.DEFINE_string("edm_dir", None, "Path to a local NVlabs/edm checkout.",
                               required=True)
_CONFIGS = flags.DEFINE_list("configs", ["tiny", "cifar", "cifar_in3_precond"],
                             "Configs: tiny, cifar, cifar_in3_precond.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_FLOAT64 = flags.DEFINE_bool("float64", True, "Also compare in float64 (enables x64).")


def _network_kwargs(name):
  from edm_flax.configs import default  # pylint: disable=g-import-not-at-top
  net = dict(default.get_config("tiny" if name == "tiny" else "cifar").network)
  if name == "cifar_in3_precond":
    net["in_channels"] = 3
  net.pop("dtype")
  return net


def _randomise(torch, module, seed):
  """Redraws every parameter so that each layer contributes at O(1) scale."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / np.sqrt(fan_in))
      elif name.endswith("weight"):  # GroupNorm scale
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _compare(torch, edm_networks, name, dtype_name, randomise, exact=False):
  from edm_flax import convert, networks, precond  # pylint: disable=g-import-not-at-top
  kwargs = _network_kwargs(name)
  use_precond = name.endswith("precond")
  torch_dtype = torch.float64 if dtype_name == "float64" else torch.float32
  np_dtype = np.float64 if dtype_name == "float64" else np.float32
  torch.manual_seed(_SEED.value)
  torch_kwargs = dict(kwargs, channel_mult=list(kwargs["channel_mult"]),
                      attn_resolutions=list(kwargs["attn_resolutions"]),
                      resample_filter=list(kwargs["resample_filter"]),
                      embedding_type="positional", encoder_type="standard",
                      decoder_type="standard", channel_mult_noise=1)
  if use_precond:
    # EDM's EDMPrecond builds SongUNet(in=out=img_channels); ours with no condition matches it.
    for k in ("img_resolution", "in_channels", "out_channels", "label_dim"):
      torch_kwargs.pop(k)
    net = edm_networks.EDMPrecond(img_resolution=32, img_channels=3, model_type="SongUNet",
                                  **torch_kwargs)
    inner = net.model
  else:
    net = edm_networks.SongUNet(**torch_kwargs)
    inner = net
  if randomise:
    _randomise(torch, inner, _SEED.value + 1)
  net = net.to(torch_dtype).eval()

  rng = np.random.default_rng(_SEED.value)
  b, c = _BATCH.value, kwargs["in_channels"]
  x = rng.standard_normal((b, c, 32, 32)).astype(np_dtype)
  sigma = np.exp(rng.uniform(np.log(0.002), np.log(80.0), b)).astype(np_dtype)
  if exact:
    sigma[:] = 1  # c_noise = 0: the embedding is exactly [0…0, 1…1] on both sides
  aug = rng.standard_normal((b, 9)).astype(np_dtype)

  flax_kwargs = dict(kwargs, dtype=jnp.dtype(dtype_name))
  flax_net = networks.SongUNet(**flax_kwargs)
  state_dict = {k: v.detach().numpy() for k, v in inner.state_dict().items()}
  params = convert.torch_state_dict_to_flax(state_dict, flax_net, dtype=np_dtype)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  with torch.no_grad():
    if use_precond:
      out_t = net(torch.from_numpy(x), torch.from_numpy(sigma), None,
                  augment_labels=torch.from_numpy(aug)).numpy()
      model = precond.EDMPrecond(model=flax_net)
      fn = jax.jit(lambda p, x, s, a: model.apply({"params": {"model": p}}, x, s, None, a))
    else:
      noise_labels = (np.log(sigma) / 4).astype(np_dtype)
      out_t = net(torch.from_numpy(x), torch.from_numpy(noise_labels), None,
                  augment_labels=torch.from_numpy(aug)).numpy()
      sigma = noise_labels
      fn = jax.jit(lambda p, x, s, a: flax_net.apply({"params": p}, x, s, a))
  t0 = time.time()
  out_f = np.asarray(fn(params, x_nhwc, jnp.asarray(sigma), jnp.asarray(aug)))
  seconds = time.time() - t0
  out_f = out_f.transpose(0, 3, 1, 2)
  diff = np.abs(out_f.astype(np.float64) - out_t.astype(np.float64))
  scale = np.abs(out_t).max()
  return dict(config=name, dtype=dtype_name, weights="random" if randomise else "edm_init",
              variant="exact" if exact else "as_is",
              max_abs_diff=float(diff.max()), max_abs_output=float(scale),
              rel=float(diff.max() / scale), flax_seconds_incl_compile=round(seconds, 1))


class _Float64Attention:
  """Stand-in for EDM's AttentionOp that keeps the input dtype (forward only)."""

  def __init__(self, torch):
    self._torch = torch

  def apply(self, q, k):
    logits = self._torch.einsum("ncq,nck->nqk", q, k) / np.sqrt(k.shape[1])
    return logits.softmax(dim=2)


def main(argv):
  del argv
  jax.config.update("jax_enable_x64", _FLOAT64.value)
  jax.config.update("jax_default_matmul_precision", "highest")
  sys.path.insert(0, _EDM_DIR.value)
  import torch  # pylint: disable=g-import-not-at-top
  from training import networks as edm_networks  # pylint: disable=g-import-not-at-top
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.set_num_threads(2)
  dtypes = ["float32"] + (["float64"] if _FLOAT64.value else [])
  for name in _CONFIGS.value:
    for dtype_name in dtypes:
      if name.endswith("precond") and dtype_name == "float64":
        continue  # EDM's EDMPrecond always casts its input to float32
      for randomise in (False, True):
        print(json.dumps(_compare(torch, edm_networks, name, dtype_name, randomise)), flush=True)
      if dtype_name == "float64":
        # Two float32 islands in EDM's float64 network: the embedding frequencies (float32
        # `pow`, an ulp off the correctly rounded value in places) and AttentionOp (fp32
        # softmax). The "exact" row removes both: c_noise = 0 and EDM's attention in float64.
        original = edm_networks.AttentionOp
        edm_networks.AttentionOp = _Float64Attention(torch)
        try:
          print(json.dumps(_compare(torch, edm_networks, name, dtype_name, True, exact=True)),
                flush=True)
        finally:
          edm_networks.AttentionOp = original


if __name__ == "__main__":
  app.run(main)
