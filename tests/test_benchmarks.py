"""The benchmarks run end to end (briefly) and end with their JSON line."""

import json
import subprocess
import sys

from inception_jax import config_lib


def test_input_pipeline_benchmark_prints_both_pipelines():
  result = subprocess.run(
      [sys.executable, 'benchmarks/input_pipeline.py', '--images', '16',
       '--size', '64', '--batch', '8', '--seconds', '1'],
      cwd=config_lib.ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['grain_images_per_sec_per_core'] > 0
  assert figures['tfdata_images_per_sec_per_core'] > 0
  assert 'inception_jax (Grain)' in result.stdout and 'tf.data' in result.stdout
