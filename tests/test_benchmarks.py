"""The benchmarks run end to end (briefly) and end with their JSON line."""

import json
import subprocess
import sys

from helpers import FAST_COMPILE

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


def test_accumulation_memory_benchmark_compares_both_steps():
  """At the tiny scale (the figures at 299×299: docs/results.md): a batch of 16 as two
  micro-batches of 8 needs less temporary memory than in one pass."""
  import os
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  result = subprocess.run(
      [sys.executable, 'benchmarks/accumulation_memory.py', '--config',
       'configs/inception_v3.py:scale=tiny', '--batches', '16', '--micro', '8',
       '--image-size', '75'],
      cwd=config_lib.ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['batches'] == [16] and figures['micro'] == 8
  (accumulated,), (single,) = figures['accumulated_temp_bytes'], figures['single_pass_temp_bytes']
  assert 0 < accumulated < single


def test_train_step_benchmark_measures_ours_and_both_peers():
  """At a small scale (the figures at 299×299: docs/results.md): this project's step,
  Keras's and torchvision's, and the matmul ceiling, in one run — in
  bfloat16, as on a GPU (`--dtype auto` there): all three peers in mixed
  precision."""
  import os
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  result = subprocess.run(
      [sys.executable, 'benchmarks/train_step.py', '--config',
       'configs/inception_v3.py:scale=tiny', '--image-size', '75', '--batch', '8',
       '--windows', '1', '--steps', '1', '--dtype', 'bfloat16'],
      cwd=config_lib.ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('images_per_sec', 'keras_images_per_sec', 'torchvision_images_per_sec',
              'compile_seconds'):
    assert figures[key] > 0, key
  assert figures['ratio_vs_keras'] == figures['images_per_sec'] / figures['keras_images_per_sec']
  assert 0 < figures['matmul_fraction'] < 1
  assert figures['dtype'] == 'bfloat16' and figures['backend'] == 'cpu'
  assert 'Keras InceptionV3 (JAX)' in result.stdout and 'torchvision inception_v3' in result.stdout


def test_batch_scaling_tabulates_and_plots_each_batch(tmp_path, capsys):
  """`batch_scaling.py` (the plot of docs/results.md) at the tiny scale, this project's
  step only: one point per batch, a table row each, the plot written."""
  import os
  sys.path.insert(0, os.path.join(config_lib.ROOT, 'benchmarks'))
  import batch_scaling
  plot = tmp_path / 'scaling.png'
  points = batch_scaling.main(['--config', 'configs/inception_v3.py:scale=tiny',
                               '--batches', '8,16', '--image-sizes', '75', '--peers', '',
                               '--windows', '1', '--steps', '1', '--plot', str(plot)])
  assert [(p['batch'], p['image_size']) for p in points] == [(8, 75), (16, 75)]
  assert all(p['images_per_sec'] > 0 and p['keras_images_per_sec'] is None for p in points)
  out = capsys.readouterr().out
  assert json.loads(out.strip().splitlines()[-1]) == points
  assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b'\x89PNG'
