"""Deterministic keys: every random choice of a run derives from (seed, run_id) by `fold_in`.

Any run can therefore be recomputed alone: its images, augmentation, victim init and
reconstruction candidates depend on nothing else (SPEC §6, `seed`).
"""
import jax

STREAMS = {"data": 0, "augment": 1, "victim": 2, "attack": 3, "noise": 4}


def run_key(seed: int, run_id: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), run_id)


def stream_key(seed: int, run_id: int, stream: str) -> jax.Array:
  """The key of one named random stream ("data", "augment", "victim", "attack", "noise")."""
  if stream not in STREAMS:
    raise ValueError(f"unknown random stream {stream!r}; expected one of {tuple(STREAMS)}")
  return jax.random.fold_in(run_key(seed, run_id), STREAMS[stream])
