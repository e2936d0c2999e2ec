"""Decode-and-augment throughput per core: our Grain pipeline beside tf.data.

Both sides do the same work on the same generated ImageNet-like JPEGs
(about 500×375, quality 90): TensorFlow's distorted bounding-box crop (area
5–100%, aspect 3/4–4/3, covering 10% of the image, 100 attempts), bilinear
resize to 299×299, a random flip, batching — each side up to what its train
step takes: tf.data scales to [-1, 1] float32 on the host, as Google's
pipeline does; ours hands on uint8 pixels, which the step scales on the
device (`pipeline.network_input`). Both run on one core: Grain with one
reader thread (and OpenCV's resize on one thread), tf.data with
`num_parallel_calls=1` and one-thread pools. TensorFlow uses
`decode_and_crop_jpeg`, which decodes only the crop; ours decodes the whole
image with libjpeg-turbo (simplejpeg), at a reduced DCT scale when the crop
is at least twice the output.

  python benchmarks/input_pipeline.py [--images 200] [--size 299] [--seconds 10]

The last line is one JSON object with `grain_images_per_sec_per_core` and
`tfdata_images_per_sec_per_core`. TensorFlow is the reference here, not a
dependency of training (requirements-test.txt installs it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inception_jax.data import synthetic  # noqa: E402


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
  """ImageNet-like JPEGs: 500×375 (or 375×500) scenes with texture and noise."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    scene = synthetic.render(int(rng.integers(48)), 500, rng).astype(np.int16)
    scene += rng.integers(-24, 25, scene.shape, dtype=np.int16)   # photo-like detail
    scene = np.clip(scene, 0, 255).astype(np.uint8)
    scene = scene[:375] if i % 4 else scene[:, :375]
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format='JPEG', quality=90)
    out.append(buf.getvalue())
  return out


class _Bytes:
  def __init__(self, jpegs):
    self.jpegs = jpegs

  def __len__(self):
    return len(self.jpegs)

  def __getitem__(self, i):
    return {'image': self.jpegs[i], 'label': i % 10, 'where': f'jpeg {i}'}


def _rate(iterator, batch: int, seconds: float) -> float:
  next(iterator)                                   # warm-up: threads, tracing
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += batch
  return count / (time.perf_counter() - start)


def pipeline_rate(source, size: int, batch: int, seconds: float, *, threads: int = 1,
                  workers: int = 0, color_distort: str = 'none') -> float:
  """Images/s of the training pipeline over `source` (records with JPEG
  bytes): `threads` reader threads in each of `workers` Grain worker
  processes (0: in this process), OpenCV on one thread per reader."""
  import cv2
  import ml_collections
  from inception_jax.data import pipeline
  cv2.setNumThreads(1)
  cfg = ml_collections.ConfigDict(dict(
      image_size=size, crop_sampler='tensorflow', crop_area_min=0.05, crop_attempts=100,
      min_object_covered=0.1, color_distort=color_distort,
      eval_central_fraction=0.875, skip_corrupt=False, num_workers=workers,
      num_threads=threads, prefetch=2 * batch))
  ds = pipeline.train_dataset(source, cfg, seed=0, local_batch=batch,
                              process_index=0, process_count=1)
  return _rate(iter(ds), batch, seconds)


def grain_rate(jpegs, size: int, batch: int, seconds: float) -> float:
  """One core: one reader thread, no worker process."""
  return pipeline_rate(_Bytes(jpegs), size, batch, seconds)


def tfdata_rate(jpegs, size: int, batch: int, seconds: float) -> float:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)

  def augment(data):
    shape = tf.image.extract_jpeg_shape(data)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0),
        max_attempts=100, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
    image = tf.image.resize(image, [size, size], method='bilinear')
    image = tf.image.random_flip_left_right(image)
    return image * (2.0 / 255.0) - 1.0

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  ds = (tf.data.Dataset.from_tensor_slices(jpegs).repeat().shuffle(len(jpegs))
        .map(augment, num_parallel_calls=1).batch(batch).prefetch(2)
        .with_options(options))
  return _rate(iter(ds.as_numpy_iterator()), batch, seconds)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=200)
  parser.add_argument('--size', type=int, default=299)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--seconds', type=float, default=10.0)
  args = parser.parse_args(argv)

  jpegs = make_jpegs(args.images)
  kb = np.mean([len(j) for j in jpegs]) / 1024
  print(f'{len(jpegs)} JPEGs, mean {kb:.0f} KiB; output {args.size}×{args.size}; '
        f'batch {args.batch}; {args.seconds:g} s per side; one core each')
  grain = grain_rate(jpegs, args.size, args.batch, args.seconds)
  tfdata = tfdata_rate(jpegs, args.size, args.batch, args.seconds)
  print(f'{"pipeline":<24}{"images/s per core":>20}')
  print(f'{"inception_jax (Grain)":<24}{grain:>20.1f}')
  print(f'{"tf.data (TensorFlow)":<24}{tfdata:>20.1f}')
  print(f'{"ratio Grain / tf.data":<24}{grain / tfdata:>20.2f}')
  print(json.dumps({'grain_images_per_sec_per_core': round(grain, 1),
                    'tfdata_images_per_sec_per_core': round(tfdata, 1),
                    'ratio': round(grain / tfdata, 3), 'image_size': args.size,
                    'source_images': len(jpegs)}))


if __name__ == '__main__':
  main()
