"""Runs the Colab notebooks top to bottom on their tiny settings, and checks how they are stored.

Each notebook is executed with nbclient in a fresh kernel of this interpreter, in a temporary
working directory, with its `parameters` cell replaced (TINY, a temporary WORKDIR, the CIFAR-10
dir); any cell error fails the test. The committed files must carry no outputs, so diffs stay
reviewable and Colab opens them clean.
"""
import ast
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e .[test])")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e .[test])")
pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e .[test])")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = ("01_attack_one_victim.ipynb", "02_build_a_dataset.ipynb", "03_restore.ipynb")


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def _parameters_cell(nb):
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
  assert len(cells) == 1, "a notebook needs exactly one code cell tagged 'parameters'"
  assert cells[0].cell_type == "code"
  return cells[0]


def _assigned_names(source):
  return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
          for t in node.targets if isinstance(t, ast.Name)}


def _tiny_parameters(name, workdir, cifar_dir):
  """The parameter values each notebook runs with here (all CPU-sized)."""
  params = {"TINY": True, "WORKDIR": workdir, "DATA_DIR": cifar_dir, "SEED": 0}
  if name.startswith("03"):
    params.update(DATASET="", CHECKPOINT="")   # make the pairs and train a restorer here
  return params


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A python3 kernelspec for *this* interpreter, found first through JUPYTER_PATH.

  The kernel.json shipped in ipykernel's wheel runs plain `python`, which may not be the venv's.
  """
  from ipykernel import kernelspec
  prefix = tmp_path_factory.mktemp("kernelspec")
  kernelspec.install(kernel_name="python3", prefix=str(prefix))
  old = os.environ.get("JUPYTER_PATH")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(prefix / "share" / "jupyter")] + ([old] if old else [])))
    yield


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{name}: cell {i} has stored outputs"
      assert cell.execution_count is None, f"{name}: cell {i} has an execution count"
  first = nb.cells[0]
  assert first.cell_type == "markdown" and "colab.research.google.com" in first.source
  install = [c for c in nb.cells if c.cell_type == "code" and "pip" in c.source]
  assert install and all('"google.colab" in sys.modules' in c.source for c in install), (
      f"{name}: pip installs must run only inside Colab")
  assert {"TINY", "WORKDIR"} <= _assigned_names(_parameters_cell(nb).source)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, cifar_dir, kernel_env, tmp_path):
  nb = _read(name)
  cell = _parameters_cell(nb)
  params = _tiny_parameters(name, str(tmp_path / "work"), cifar_dir)
  assert _assigned_names(cell.source) == set(params), (
      f"{name}: the test's parameters {sorted(params)} differ from the notebook's "
      f"{sorted(_assigned_names(cell.source))}")
  cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(cwd)}})
  t0 = time.time()
  try:
    client.execute()
  finally:
    # Keep the executed copy next to the outputs, for a look after a failure.
    nbformat.write(nb, str(tmp_path / name))
  print(f"{name}: {time.time() - t0:.1f} s")
  assert not list(cwd.iterdir()), f"{name} wrote into its working directory: {os.listdir(cwd)}"
