"""`python -m inception_jax train|sweep|compare|cost …` (see inception_jax/cli.py)."""

import sys

from inception_jax import cli

if __name__ == '__main__':      # not when imported (e.g. by a tool listing modules)
  sys.exit(cli.main())
