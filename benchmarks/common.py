"""Shared plumbing of the benchmarks: JAX options, synthetic victims, timing, tables.

The benchmarks are scripts, not tests: they print tables whose ratios are measured in one
process, with the implementations timed alternately so that a change in machine load hits
all of them alike. Absolute times on a shared machine are noisy; the ratios are the result.
"""
import functools
import os
import statistics
import time
from typing import Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp

from kktjax import kkt
from kktjax import victim

# SPEC §2: input 3×32×32 CIFAR-10, flattened.
INPUT_DIM = 3072


def setup_jax(matmul_precision: str = "highest") -> None:
  """True fp32 matmuls (SPEC §2), as the victims and the attack run them."""
  jax.config.update("jax_default_matmul_precision", matmul_precision)


def machine_line() -> str:
  """One line describing the machine and its current load (the benchmarks share it)."""
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  dev = jax.devices()[0]
  return (f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def load_line() -> str:
  load = os.getloadavg()
  return f"load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# ------------------------------------------------------------------------------------------
# Synthetic victims and data (CIFAR shape; the timings do not depend on the pixel values).
# ------------------------------------------------------------------------------------------
def synthetic_data(key: jax.Array, num_victims: int, n: int,
                   dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """x [K, n, 3072] uniform in [−0.5, 0.5) (mean-subtracted scale), y [K, n] balanced ±1."""
  x = jax.random.uniform(key, (num_victims, n, INPUT_DIM), dtype, -0.5, 0.5)
  y = jnp.where(jnp.arange(n) < n // 2, -1.0, 1.0).astype(dtype)
  return x, jnp.broadcast_to(y, (num_victims, n))


def synthetic_params(key: jax.Array, num_victims: int, width: int,
                     dtype=jnp.float32) -> dict[str, jax.Array]:
  """K freshly initialised victims (SPEC §2 init), stacked on a leading axis."""
  keys = jax.random.split(key, num_victims)
  ps = [victim.init_params(k, width, dtype=dtype) for k in keys]
  return jax.tree.map(lambda *a: jnp.stack(a), *ps)


def victim_state(params: dict[str, jax.Array], recipe: str) -> victim.TrainState:
  k = params["W1"].shape[0]
  lr = jnp.full((k,), victim.default_learning_rate(recipe), params["W1"].dtype)
  return victim.make_batched_init(recipe)(params, lr)


def generate_hparams(num_victims: int, num_runs: int) -> kkt.AttackHParams:
  """The data-generation recipe's fixed values (SPEC §3.3)."""
  return kkt.fixed_hparams(num_victims, num_runs, alpha=20.0, lambda_min=0.5, sigma=1e-3,
                           lr_x=1.0, lr_lambda=1.0)


def evaluate_hparams(num_victims: int, num_runs: int) -> kkt.AttackHParams:
  """Haim's first published good CIFAR run (SPEC §3.3), for the SGD-momentum recipe."""
  return kkt.fixed_hparams(num_victims, num_runs, alpha=19.1, lambda_min=0.498, sigma=8.86e-4,
                           lr_x=0.555, lr_lambda=1e-4)


def attack_state(recipe: str, num_victims: int, num_runs: int, m: int, key: jax.Array,
                 dtype=jnp.float32) -> kkt.AttackState:
  hp = generate_hparams if recipe == "generate" else evaluate_hparams
  hp = kkt.AttackHParams(*(jnp.asarray(v, dtype) for v in hp(num_victims, num_runs)))
  keys = jax.random.split(key, num_victims * num_runs).reshape(num_victims, num_runs, -1)
  return kkt.make_init_fn(recipe, m, INPUT_DIM, jnp.dtype(dtype))(keys, hp)


# ------------------------------------------------------------------------------------------
# Timing.
# ------------------------------------------------------------------------------------------
def block(tree) -> None:
  jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
flags.DEFINE_enum("clock", "wall", sorted(CLOCKS),
                  "wall: latency; process: CPU time of this process (less noisy on a shared "
                  "machine; with XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
                  "intra_op_parallelism_threads=1' it compares work per result).")
_clock = [time.perf_counter]


def set_clock(name: str) -> None:
  """Selects the timer: "wall" (latency) or "process" (CPU seconds summed over threads).

  The process clock measures work, not latency; on a machine shared with other jobs it is
  much less noisy (run single-threaded to compare implementations' work per result).
  """
  if name not in CLOCKS:
    raise ValueError(f"unknown clock {name!r}; expected one of {sorted(CLOCKS)}")
  _clock[0] = CLOCKS[name]


def clock() -> float:
  return _clock[0]()


def timed(fn: Callable[[], object]) -> float:
  """Seconds one call of `fn` takes, including waiting for its (JAX) results."""
  t0 = clock()
  block(fn())
  return clock() - t0


def interleaved(fns: dict[str, Callable[[], object]], repetitions: int,
                warmup: int = 1) -> dict[str, list[float]]:
  """Times each fn `repetitions` times, alternating between them (round robin).

  Each fn is first called `warmup` times untimed (compilation, allocator warm-up). The
  order within a round rotates, so no implementation always runs right after another.
  """
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  names = list(fns)
  out = {k: [] for k in names}
  for r in range(repetitions):
    shift = r % len(names)
    for k in names[shift:] + names[:shift]:
      out[k].append(timed(fns[k]))
  return out


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
  """Relative half-range around the median, e.g. '±4%', as a noise indicator."""
  m = median(xs)
  return f"±{100 * (max(xs) - min(xs)) / 2 / m:.0f}%" if m > 0 else "-"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
  cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  print(line(cells[0]))
  print("  ".join("-" * w for w in widths))
  for r in cells[1:]:
    print(line(r))


# ------------------------------------------------------------------------------------------
# FLOP counts (SPEC §10) and the machine's matmul peak.
# ------------------------------------------------------------------------------------------
def train_flops(n: int, num_params: int) -> float:
  """Forward plus backward of one full-batch epoch: 3 · 2 · n · P."""
  return 3.0 * 2.0 * n * num_params


def attack_flops(num_candidates: int, num_params: int, units: float = 9.0) -> float:
  """One attack iteration: `units` · 2 · N · P (9 = the upper estimate of SPEC §10)."""
  return units * 2.0 * num_candidates * num_params


def spec_attack_units(width: int, input_dim: int = INPUT_DIM) -> float:
  """Matmul count of SPEC §3.2's (x, λ)-gradient formula, in units of 2·N·P FLOPs.

  Per candidate, the W1-sized (h·D) products are z1, g1, ∂δ1 and the two terms of ∂x (5);
  the W2-sized (h²) ones are z2, u = W2ᵀδ2, g2 and the two terms each of ∂δ2 and ∂h1 (7);
  the h-sized ones (output, g3, ∂c) are negligible and counted as 3.
  """
  h, d = width, input_dim
  return (5 * h * d + 7 * h * h + 3 * h) / (h * d + h * h + h)


def xla_attack_units(width: int, m: int, recipe: str = "generate",
                     dtype=jnp.float32) -> float:
  """FLOPs of one compiled `kkt.attack_step` (XLA's cost analysis), in units of 2·N·P.

  This is the exact count of the graph kktjax runs (the loss, its (x, λ)-gradient and the
  optimiser update), whatever form `kkt.py` computes the gradient in.
  """
  params = synthetic_params(jax.random.PRNGKey(0), 1, width, dtype)
  state = attack_state(recipe, 1, 1, m, jax.random.PRNGKey(1), dtype)
  step = functools.partial(kkt.attack_step, kkt.make_optimizer(recipe))
  step = jax.jit(jax.vmap(jax.vmap(step, in_axes=(0, None)), in_axes=(0, 0)))
  flops = _cost_flops(step.lower(state, params).compile())
  p = victim.num_params(jax.tree.map(lambda a: a[0], params))
  return flops / (2.0 * 2 * m * p)


def xla_train_units(width: int, n: int, recipe: str = "adadelta", dtype=jnp.float32) -> float:
  """FLOPs of one compiled `victim.train_step` (XLA's cost analysis), in units of 2·n·P."""
  params = victim.init_params(jax.random.PRNGKey(0), width, dtype=dtype)
  optimizer = victim.make_optimizer(recipe)
  state = victim.init_state(params, optimizer, victim.default_learning_rate(recipe))
  x, y = synthetic_data(jax.random.PRNGKey(1), 1, n, dtype)
  step = jax.jit(functools.partial(victim.train_step, optimizer))
  flops = _cost_flops(step.lower(state, x[0], y[0]).compile())
  return flops / (2.0 * n * victim.num_params(params))


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def matmul_peak_gflops(size: int = 2048, repetitions: int = 5,
                       dtype=jnp.float32) -> float:
  """fp32 GFLOP/s (wall time) of one big jitted matmul, median of `repetitions`, for context."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  f = jax.jit(lambda a, b: a @ b)
  block(f(a, b))
  ts = []
  for _ in range(repetitions):  # Wall time, whatever `set_clock` chose.
    t0 = time.perf_counter()
    block(f(a, b))
    ts.append(time.perf_counter() - t0)
  return 2.0 * size ** 3 / median(ts) / 1e9


def vmap_vs_loop(run_vmap: Callable[[], object], run_loop: Callable[[], object],
                 repetitions: int, units: int) -> dict[str, float | str]:
  """Interleaved timings of one vmapped call and a loop of single calls, per unit of work
  (victim-epochs or run-iterations): medians and spreads."""
  ts = interleaved({"vmap": run_vmap, "loop": run_loop}, repetitions)
  return {"vmap": median(ts["vmap"]) / units, "loop": median(ts["loop"]) / units,
          "vmap_spread": spread(ts["vmap"]), "loop_spread": spread(ts["loop"])}
