#!/usr/bin/env python
"""The command line from a checkout: `python launch.py train|sweep|compare|cost …`,
the same as `python -m inception_jax …` and the installed `inception-jax` script
(inception_jax/cli.py)."""

import sys

from inception_jax import cli

if __name__ == '__main__':
  sys.exit(cli.main(prog='python launch.py'))
