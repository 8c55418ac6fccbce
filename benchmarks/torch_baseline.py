r"""An independent PyTorch baseline: one victim at a time, in the style of Haim et al.'s code.

This is the per-victim loop that kktjax's vmapped version is measured against. It is written
from SPEC §2-§3 and the structure of nivha/dataset_reconstruction (Main.py, CreateModel.py,
extraction.py); no code is copied.

Follows Haim:
  * A `torch.nn.Module` MLP of `nn.Linear` layers (bias only on layer 1 when
    `first_layer_bias`), the surrogate ReLU as a `torch.autograd.Function` whose backward
    g·σ(αz) is built from differentiable ops, so that it is differentiated again.
  * Training: full batch, `BCEWithLogitsLoss` (mean) on 0/1 targets, `loss.backward()`,
    `torch.optim.Adadelta(lr=1.0)` (data generation) or `torch.optim.SGD(lr=0.01)`
    (evaluation); the loss is read back (`.item()`) every epoch for the NaN check.
  * Attack: `values = model(x)`, the θ-gradient of Σ values·λ·y by `torch.autograd.grad(...,
    grad_outputs=ones/N, create_graph=True)`, L_kkt as the plain sum of squares over parameter
    tensors, the box and λ penalties of SPEC §3.1, the NaN check on L_kkt every iteration,
    two `SGD(momentum=0.9)` optimisers (x with lr_x, λ with lr_λ) for the "evaluate" recipe.
Does not follow Haim (each choice makes the baseline faster or fits kktjax's recipe):
  * `attack_mode="fast"` (default) takes `torch.autograd.grad(loss, [x, λ])` instead of
    `loss.backward()`, so the engine prunes ∂L/∂θ, which Haim computes and throws away
    (SPEC §10). `attack_mode="haim"` keeps `loss.backward()`.
  * The "generate" recipe uses one `torch.optim.Adadelta([x, λ], lr=1.0)` (SPEC §3.3); Haim's
    code only has the SGD-momentum pair.
  * float32 (Haim ran float64), `torch.set_num_threads(os.cpu_count())` instead of Haim's
    threadpoolctl limit of 8, no evaluation/logging/checkpointing inside the timed loops,
    no train-error computation per epoch, λ kept as an [N] vector (Haim: [N, 1], squeezed).
  * The surrogate saves z with `ctx.save_for_backward` (Haim stores it as a ctx attribute);
    both keep z's graph for the second differentiation.
  * The victim training data are not leaves with requires_grad (as in Haim); in the attack the
    parameters must require grad because the θ-gradient is taken with respect to them.
Not tried: `torch.compile` (its AOT autograd does not support the double backward of
`create_graph=True`), channels-last or mixed precision (the attack is specified in fp32).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

INPUT_DIM = 3072


def set_threads(threads: int | None = None) -> int:
  """Uses every core for intra-op parallelism (Haim capped it at 8 with threadpoolctl)."""
  threads = threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  return threads


class SurrogateReluFunction(torch.autograd.Function):
  """relu(z) forward; backward g·σ(αz) from differentiable ops (differentiated again)."""

  @staticmethod
  def forward(ctx, z, alpha):
    ctx.save_for_backward(z)
    ctx.alpha = alpha
    return torch.relu(z)

  @staticmethod
  def backward(ctx, grad_output):
    (z,) = ctx.saved_tensors
    return grad_output * torch.sigmoid(ctx.alpha * z), None


class SurrogateRelu(nn.Module):

  def __init__(self, alpha: float):
    super().__init__()
    self.alpha = alpha

  def forward(self, z):
    return SurrogateReluFunction.apply(z, self.alpha)


class MLP(nn.Module):
  """Φ(θ; x) = W3·act(W2·act(W1·x [+ b1])), layers in PyTorch's [out, in] layout."""

  def __init__(self, width: int, input_dim: int = INPUT_DIM, activation: nn.Module | None = None,
               first_layer_bias: bool = False):
    super().__init__()
    self.activation = activation if activation is not None else nn.ReLU()
    self.layers = nn.ModuleList([nn.Linear(input_dim, width, bias=first_layer_bias),
                                 nn.Linear(width, width, bias=False),
                                 nn.Linear(width, 1, bias=False)])

  def forward(self, x):
    h = x
    for layer in self.layers[:-1]:
      h = self.activation(layer(h))
    return self.layers[-1](h)


def build_model(width: int, *, alpha: float | None = None, params: Mapping[str, Any] | None = None,
                first_layer_bias: bool = False, w1_std: float = 1e-4, seed: int = 0,
                input_dim: int = INPUT_DIM, dtype: torch.dtype = torch.float32) -> MLP:
  """A victim: SPEC §2 init (W1 ~ N(0, w1_std²), others nn.Linear's default), or `params`.

  Args:
    width: hidden width.
    alpha: if given, the surrogate ReLU with this α (the attack's network); else plain ReLU.
    params: optional kktjax-style dict {"W1", "W2", "W3"[, "b1"]} of arrays to load.
    first_layer_bias, w1_std, seed, input_dim, dtype: as named.
  """
  torch.manual_seed(seed)
  act = SurrogateRelu(alpha) if alpha is not None else nn.ReLU()
  if params is not None:
    first_layer_bias = "b1" in params
  model = MLP(width, input_dim, act, first_layer_bias).to(dtype)
  with torch.no_grad():
    if params is None:
      model.layers[0].weight.normal_().mul_(w1_std)
      if first_layer_bias:
        model.layers[0].bias.normal_().mul_(w1_std)
    else:
      for layer, name in zip(model.layers, ("W1", "W2", "W3")):
        layer.weight.copy_(torch.tensor(np.array(params[name]), dtype=dtype))
      if first_layer_bias:
        model.layers[0].bias.copy_(torch.tensor(np.array(params["b1"]), dtype=dtype))
  return model


def synthetic_data(n: int, seed: int = 0, dtype: torch.dtype = torch.float32):
  """x [n, 3072] uniform in [−0.5, 0.5), y [n] ±1 balanced."""
  g = torch.Generator().manual_seed(seed)
  x = torch.rand(n, INPUT_DIM, generator=g, dtype=dtype) - 0.5
  y = torch.where(torch.arange(n) < n // 2, -1.0, 1.0).to(dtype)
  return x, y


# ------------------------------------------------------------------------------------------
# Training (Haim's Main.train / epoch_ce, full batch).
# ------------------------------------------------------------------------------------------
def train_epochs_torch(width: int = 1000, n: int = 300, epochs: int = 10,
                       recipe: str = "adadelta", *, warmup: int = 1, seed: int = 0,
                       threads: int | None = None, dtype: torch.dtype = torch.float32,
                       clock: Callable[[], float] = time.perf_counter) -> float:
  """Trains one victim for `warmup` + `epochs` full-batch epochs; returns seconds per epoch.

  Only the last `epochs` epochs are timed (model construction and warm-up are not), by
  `clock` (wall time by default; `time.process_time` gives CPU time).
  """
  if recipe not in ("adadelta", "gd"):
    raise ValueError(f"unknown victim recipe {recipe!r}; expected 'adadelta' or 'gd'")
  set_threads(threads)
  model = build_model(width, seed=seed, dtype=dtype)
  x, y = synthetic_data(n, seed, dtype)
  target = (y + 1) / 2  # BCEWithLogits wants 0/1.
  if recipe == "adadelta":
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
  else:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
  criterion = nn.BCEWithLogitsLoss()

  def epoch():
    p = model(x).view(-1)
    loss = criterion(p, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if np.isnan(loss.detach().item()):
      raise ValueError("victim training diverged")

  for _ in range(warmup):
    epoch()
  t0 = clock()
  for _ in range(epochs):
    epoch()
  return (clock() - t0) / epochs


# ------------------------------------------------------------------------------------------
# The KKT attack (Haim's extraction.py / Main.data_extraction).
# ------------------------------------------------------------------------------------------
def candidate_labels(num: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
  y = torch.ones(num, dtype=dtype)
  y[:num // 2] = -1
  return y


def kkt_loss_torch(model: MLP, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor,
                   lambda_min: float) -> tuple[torch.Tensor, torch.Tensor]:
  """(L, L_kkt) of SPEC §3.1 with the graph kept for differentiation w.r.t. x and λ."""
  num = x.shape[0]
  values = model(x).squeeze(1)
  output = values * lam * y
  params = list(model.parameters())
  grads = torch.autograd.grad(output, params,
                              grad_outputs=torch.ones_like(output).div(num),
                              create_graph=True)
  loss_kkt = sum((p.detach() - g).pow(2).sum() for p, g in zip(params, grads))
  loss_verify = ((x - 1).relu().pow(2).sum() + (-1 - x).relu().pow(2).sum() +
                 5 * (lambda_min - lam).relu().pow(2).sum())
  return loss_kkt + loss_verify, loss_kkt


def kkt_loss_and_grads(params: Mapping[str, Any], x: Any, lam: Any, alpha: float,
                       lambda_min: float, dtype: torch.dtype = torch.float64):
  """L, L_kkt, ∂L/∂x, ∂L/∂λ in Haim's semantics, for cross-checks against kktjax.

  Args:
    params: {"W1", "W2", "W3"[, "b1"]} arrays in [out, in] layout.
    x: [N, D] candidates; lam: [N] multipliers (y = −1 for the first N/2, +1 after).
    alpha, lambda_min: surrogate sharpness and λ bound.
    dtype: torch dtype of the computation.

  Returns:
    (L, L_kkt, grad_x [N, D], grad_lam [N]) as float64 NumPy values.
  """
  w1 = np.asarray(params["W1"])
  model = build_model(w1.shape[0], alpha=alpha, params=params, input_dim=w1.shape[1],
                      dtype=dtype)
  xt = torch.tensor(np.array(x), dtype=dtype, requires_grad=True)
  lt = torch.tensor(np.array(lam), dtype=dtype, requires_grad=True)
  y = candidate_labels(xt.shape[0], dtype)
  loss, loss_kkt = kkt_loss_torch(model, xt, lt, y, lambda_min)
  gx, gl = torch.autograd.grad(loss, [xt, lt])
  as_np = lambda t: t.detach().to(torch.float64).numpy()
  return loss.detach().item(), loss_kkt.detach().item(), as_np(gx), as_np(gl)


def attack_iters_torch(width: int = 1000, m: int = 200, iters: int = 5,
                       recipe: str = "generate", *, attack_mode: str = "fast", warmup: int = 1,
                       alpha: float | None = None, lambda_min: float | None = None,
                       sigma: float | None = None, lr_x: float | None = None,
                       lr_lambda: float = 1e-4, params: Mapping[str, Any] | None = None,
                       seed: int = 0, threads: int | None = None,
                       dtype: torch.dtype = torch.float32,
                       clock: Callable[[], float] = time.perf_counter) -> float:
  """Runs `warmup` + `iters` attack iterations on one victim; returns seconds per iteration.

  Args:
    width: victim hidden width (ignored when `params` is given).
    m: candidates per class (N = 2m).
    iters: timed iterations (after `warmup` untimed ones).
    recipe: "generate" (one Adadelta over (x, λ), α = 20, λ_min = 0.5, σ = 1e-3) or
      "evaluate" (SGD momentum 0.9 for x and λ separately; defaults: Haim's first good CIFAR
      run, α = 19.1, λ_min = 0.498, σ = 8.86e-4, lr_x = 0.555, lr_λ = 1e-4).
    attack_mode: "fast" (gradients w.r.t. (x, λ) only) or "haim" (`loss.backward()`, which
      also forms ∂L/∂θ).
    alpha, lambda_min, sigma, lr_x, lr_lambda: override the recipe's values.
    params: optional victim weights; default a freshly initialised victim.
    seed, threads, dtype: as named.
    clock: the timer (wall time by default; `time.process_time` gives CPU time).
  """
  defaults = {"generate": (20.0, 0.5, 1e-3, 1.0), "evaluate": (19.1, 0.498, 8.86e-4, 0.555)}
  if recipe not in defaults:
    raise ValueError(f"unknown attack recipe {recipe!r}; expected 'generate' or 'evaluate'")
  if attack_mode not in ("fast", "haim"):
    raise ValueError(f"attack_mode must be 'fast' or 'haim', got {attack_mode!r}")
  d_alpha, d_lmin, d_sigma, d_lrx = defaults[recipe]
  alpha = d_alpha if alpha is None else alpha
  lambda_min = d_lmin if lambda_min is None else lambda_min
  sigma = d_sigma if sigma is None else sigma
  lr_x = d_lrx if lr_x is None else lr_x
  set_threads(threads)
  model = build_model(width, alpha=alpha, params=params, seed=seed, dtype=dtype)
  model.eval()
  num = 2 * m
  dim = model.layers[0].weight.shape[1]
  g = torch.Generator().manual_seed(seed + 1)
  x = (torch.randn(num, dim, generator=g, dtype=dtype) * sigma).requires_grad_(True)
  lam = torch.rand(num, generator=g, dtype=dtype).requires_grad_(True)
  y = candidate_labels(num, dtype)
  if recipe == "generate":
    opts = [torch.optim.Adadelta([x, lam], lr=1.0)]
  else:
    opts = [torch.optim.SGD([x], lr=lr_x, momentum=0.9),
            torch.optim.SGD([lam], lr=lr_lambda, momentum=0.9)]

  def iteration():
    loss, loss_kkt = kkt_loss_torch(model, x, lam, y, lambda_min)
    if np.isnan(loss_kkt.detach().item()):
      raise ValueError("attack diverged")
    for opt in opts:
      opt.zero_grad()
    if attack_mode == "haim":
      loss.backward()
    else:
      x.grad, lam.grad = torch.autograd.grad(loss, [x, lam])
    for opt in opts:
      opt.step()

  for _ in range(warmup):
    iteration()
  t0 = clock()
  for _ in range(iters):
    iteration()
  return (clock() - t0) / iters


def matmul_peak_gflops(size: int = 2048, repetitions: int = 5) -> float:
  """fp32 GFLOP/s of one big torch matmul (median of `repetitions`), for context."""
  a, b = torch.randn(size, size), torch.randn(size, size)
  a @ b
  ts = []
  for _ in range(repetitions):
    t0 = time.perf_counter()
    a @ b
    ts.append(time.perf_counter() - t0)
  return 2.0 * size ** 3 / float(np.median(ts)) / 1e9


def main():
  threads = set_threads()
  print(f"torch {torch.__version__}, {threads} threads")
  print(f"train  width 1000 n 300: {train_epochs_torch(epochs=5) * 1e3:.1f} ms/epoch")
  for mode in ("fast", "haim"):
    t = attack_iters_torch(iters=3, attack_mode=mode)
    print(f"attack width 1000 N 400 ({mode}): {t * 1e3:.1f} ms/iteration")


if __name__ == "__main__":
  main()
