"""Shared test fixtures. Nothing is skipped silently: every skip carries its reason (-rs)."""
import os

import jax
import pytest

# Victims and the attack are specified in true fp32/fp64 matmuls (SPEC §2).
jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")


def _tfds_dir():
  for d in (os.environ.get("TFDS_DATA_DIR"), os.path.join(SHARED, "tensorflow_datasets")):
    if d and os.path.isdir(os.path.join(d, "cifar10")):
      return d
  return None


@pytest.fixture(scope="session")
def cifar_dir():
  """A tfds data dir holding a prepared cifar10, or a skip that says why there is none."""
  d = _tfds_dir()
  if d is None:
    pytest.skip("real CIFAR-10 not available: set TFDS_DATA_DIR to a tfds dir with cifar10")
  return d


@pytest.fixture(scope="session")
def duplicates_csv():
  p = os.environ.get("KKTJAX_CIFAR_DUPLICATES") or os.path.join(
      SHARED, "data", "cifair10_duplicates_mapped.csv")
  if not os.path.isfile(p):
    pytest.skip("ciFAIR duplicate list not available (shared/data/cifair10_duplicates_mapped.csv)")
  return p


@pytest.fixture
def x64():
  """Runs a test with jax_enable_x64 on, restoring the previous setting afterwards."""
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", prev)
