"""inception_jax: "Rethinking the Inception Architecture for Computer Vision"
(Szegedy et al., CVPR 2016) in JAX and Flax NNX.

The command line is `python -m inception_jax` (inception_jax/cli.py); the
library imports nothing heavy here, so `--version` answers at once.
"""

# The one place the version is written: pyproject.toml reads it from here
# (setuptools' dynamic `attr:`), so the wheel's metadata and the code agree.
__version__ = '0.2.0.dev0'
