"""kktjax: mass-produced KKT reconstructions of training data, and restorers for them."""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.30",
    "flax>=0.8",
    "optax>=0.2",
    "orbax-checkpoint>=0.5",
    "numpy>=1.26",
    "dm-pix>=0.4",
    "tensorflow-datasets>=4.9.3",
    "absl-py>=2.0",
    "array-record>=0.5",
    "grain>=0.2",
    "pillow>=10",
    "ml-collections>=0.1.1",
    "chex>=0.1.86",
    "matplotlib>=3.7",
    "tqdm>=4.66",
    "tensorboardX>=2.6",   # restorer metrics to TensorBoard (no TensorFlow needed)
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
    # torch pinned: on the build machines this exact version is a CPU wheel on disk; a
    # looser pin would let pip resolve a multi-GB CUDA build.
    "bench": ["torch==2.13.0"],
    "notebooks": ["jupyter>=1.0", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
    "gpu": ["jax[cuda12]"],
}

setuptools.setup(
    name="kktjax",
    version="0.1.0",
    description="Vmapped KKT reconstruction attacks, pair datasets and EDM restorers in JAX.",
    packages=setuptools.find_packages(include=["kktjax", "kktjax.*", "edm_flax", "edm_flax.*",
                                               "launch", "launch.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
