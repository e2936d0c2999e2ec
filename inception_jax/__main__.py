"""`python -m inception_jax train|sweep|compare|cost …` (see inception_jax/cli.py)."""

import sys

from inception_jax import cli

sys.exit(cli.main())
