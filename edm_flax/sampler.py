"""EDM's sampler (`edm_sampler` in generate.py): Heun's 2nd-order method on the EDM ODE.

The default is deterministic: 18 steps, 35 network evaluations. With S_churn > 0 it is EDM's
stochastic sampler (Algorithm 2). The time steps are computed in float64 NumPy, so they are exact
whatever the JAX precision; the state is float64 when x64 is on, as in EDM, else float32.

References:
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
  2022, Algorithm 2 and eq. 5; NVlabs/edm@62072d2, `generate.py` (`edm_sampler`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def sampler_schedule(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     rho: float = 7.0) -> np.ndarray:
  """EDM's time steps t_0 > … > t_{N−1} = σ_min, then t_N = 0.

  Args:
    num_steps: N, the number of steps (≥ 2).
    sigma_min: last nonzero noise level.
    sigma_max: first noise level.
    rho: the schedule exponent ρ.

  Returns:
    float64 NumPy array [N + 1]: t_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
  """
  if num_steps < 2:
    raise ValueError(f"sampler_schedule: num_steps must be >= 2, got {num_steps}.")
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"sampler_schedule: need 0 < sigma_min < sigma_max, got {sigma_min}, "
                     f"{sigma_max}.")
  i = np.arange(num_steps, dtype=np.float64)
  lo, hi = np.float64(sigma_min) ** (1 / rho), np.float64(sigma_max) ** (1 / rho)
  t = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
  return np.concatenate([t, np.zeros(1)])


def edm_sampler(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], latents: jax.Array, *,
                num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0,
                key: jax.Array | None = None) -> jax.Array:
  """Samples with EDM's Heun sampler.

  Args:
    denoise_fn: D(x, sigma) -> denoised x, with sigma a scalar array; closes over params,
      condition and augmentation labels.
    latents: z ~ N(0, I), shaped like the output; x_0 = t_0·z.
    num_steps: N; the sampler makes 2N − 1 calls of denoise_fn.
    sigma_min: last nonzero noise level.
    sigma_max: first noise level.
    rho: schedule exponent.
    S_churn: total stochasticity (0 = deterministic).
    S_min: churn only where S_min <= t_i <= S_max.
    S_max: see S_min.
    S_noise: scale of the noise added by churn.
    key: PRNG key, required when S_churn > 0.

  Returns:
    The sample x_N, shaped like latents (float64 under x64, else float32).
  """
  if S_churn < 0:
    raise ValueError(f"edm_sampler: S_churn must be >= 0, got {S_churn}.")
  if S_churn > 0 and key is None:
    raise ValueError("edm_sampler: a key is needed when S_churn > 0.")
  t = sampler_schedule(num_steps, sigma_min, sigma_max, rho)
  gamma = np.where((S_min <= t[:-1]) & (t[:-1] <= S_max),
                   min(S_churn / num_steps, np.sqrt(2) - 1), 0.0)
  t_hat = t[:-1] + gamma * t[:-1]
  stochastic = bool(np.any(gamma > 0))
  noise_scale = np.sqrt(t_hat**2 - t[:-1]**2) * S_noise

  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  t_next_all, t_hat_all, noise_all = (jnp.asarray(a, dtype) for a in (t[1:], t_hat, noise_scale))
  x0 = jnp.asarray(latents).astype(dtype) * jnp.asarray(t[0], dtype)
  if key is None:
    key = jax.random.key(0)  # unused: no churn

  def euler(i, x_cur):
    t_h, t_next = t_hat_all[i], t_next_all[i]
    x_hat = x_cur
    if stochastic:
      eps = jax.random.normal(jax.random.fold_in(key, i), x_cur.shape, dtype)
      x_hat = x_cur + noise_all[i] * eps
    d_cur = (x_hat - denoise_fn(x_hat, t_h).astype(dtype)) / t_h
    return x_hat, d_cur, x_hat + (t_next - t_h) * d_cur

  def heun_step(i, x_cur):
    x_hat, d_cur, x_next = euler(i, x_cur)
    t_h, t_next = t_hat_all[i], t_next_all[i]
    d_prime = (x_next - denoise_fn(x_next, t_next).astype(dtype)) / t_next
    return x_hat + (t_next - t_h) * (0.5 * d_cur + 0.5 * d_prime)

  # Heun for i = 0 … N−2, then a final Euler step to t_N = 0: 2(N−1) + 1 evaluations.
  x = jax.lax.fori_loop(0, num_steps - 1, heun_step, x0)
  return euler(num_steps - 1, x)[2]
