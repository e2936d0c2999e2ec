"""How train-step throughput scales with the batch: `train_step.py` at
several batch sizes (and image sizes), this project beside its peers, as a
table and a plot.

  python benchmarks/batch_scaling.py [--batches 4,8,16,32] [--image-sizes 299]
      [--peers keras,torchvision] [--plot docs/images/train_step_vs_batch.png]

Each point is one `train_step.py` measurement (median of its timed windows)
in a process of its own: measured one after another in a single process, this
project's step fell to 0.64–0.82 of Keras's after the first points, against
1.1 when measured alone (the cause was not pinned down; separate processes
remove it). The last line is one JSON object with every point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SERIES = (('images_per_sec', 'inception_jax'),
          ('keras_images_per_sec', 'Keras InceptionV3 (JAX)'),
          ('torchvision_images_per_sec', 'torchvision inception_v3'))


def plot(points: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  sizes = sorted({p['image_size'] for p in points})
  fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
  for ax, size in zip(axes[0], sizes):
    at = [p for p in points if p['image_size'] == size]
    for key, label in SERIES:
      xs = [p['batch'] for p in at if p.get(key)]
      if xs:
        ax.plot(xs, [p[key] for p in at if p.get(key)], marker='o', label=label)
    first = at[0]
    ax.set(xscale='log', xlabel='batch', ylabel='images/s',
           title=f'{size}×{size}, {first["dtype"]}, {first["devices"]} × {first["backend"]}')
    ax.minorticks_off()
    ax.set_xticks([p['batch'] for p in at], [str(p['batch']) for p in at])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def measure(args: list[str]) -> dict:
  """One `train_step.py` run in a new process: its output passes through,
  its last line (the JSON figures) is the point."""
  proc = subprocess.run([sys.executable, os.path.join(HERE, 'train_step.py'), *args],
                        capture_output=True, text=True, check=False)
  sys.stdout.write(proc.stdout)
  if proc.returncode:
    sys.stderr.write(proc.stderr)
    raise SystemExit(f'train_step.py {" ".join(args)} exited with status {proc.returncode}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batches', default='4,8,16,32')
  parser.add_argument('--image-sizes', default='299')
  parser.add_argument('--peers', default='keras,torchvision')
  parser.add_argument('--dtype', default='auto')
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--config', default='configs/inception_v3.py')
  parser.add_argument('--plot', default='', help='write the plot to this PNG')
  args = parser.parse_args(argv)
  points = []
  for size in map(int, args.image_sizes.split(',')):
    for batch in map(int, args.batches.split(',')):
      points.append(measure([
          '--config', args.config, '--batch', str(batch), '--image-size', str(size),
          '--dtype', args.dtype, '--windows', str(args.windows), '--steps', str(args.steps),
          '--peers', args.peers]))
  print()
  print(f'{"size":>5} {"batch":>6} ' + ' '.join(f'{label:>26}' for _, label in SERIES)
        + f' {"ratio vs Keras":>15}')
  for p in points:
    cells = ' '.join(f'{p[key]:>26.2f}' if p.get(key) else f'{"-":>26}' for key, _ in SERIES)
    ratio = f'{p["ratio_vs_keras"]:>15.2f}' if p.get('ratio_vs_keras') else f'{"-":>15}'
    print(f'{p["image_size"]:>5} {p["batch"]:>6} {cells} {ratio}')
  if args.plot:
    plot(points, args.plot)
    print(f'plot: {args.plot}')
  print(json.dumps(points))
  return points


if __name__ == '__main__':
  main()
