"""Train-step throughput of this project beside the peers a user would pick
instead, measured in one run.

A full train step is forward + backward + update. For this project that is
`train.make_train_step` with a config's recipe (default configs/inception_v3.py
at paper scale: RMSProp, clipping, weight decay, label smoothing, the aux head,
the EMA), one BatchNorm group per device batch. Around it, the same run
measures:
  - a 2048² float32 matmul: the machine's ceiling, as FLOP/s;
  - Keras 3's `InceptionV3` on the JAX backend (`train_on_batch`, jitted,
    RMSProp, no aux head; Keras's 'mixed_bfloat16' policy when the dtype is
    bfloat16);
  - torchvision's `inception_v3` with PyTorch (channels-last, RMSProp, the aux
    head from 299×299 up, where its 5×5 layer fits; bfloat16 autocast when
    the dtype is bfloat16), in a process of its own, on the GPU where there
    is one (cuDNN's benchmark mode on), where PyTorch is installed;
    `torchvision_run(..., compile=True)` puts the model through
    `torch.compile` (benchmarks/gpu/suite.py).

The dtype is the compute dtype of all three (parameters stay float32);
`auto`, the default, is bfloat16 on a GPU or TPU and float32 on a CPU, as
`model.dtype='auto'` of the paper-scale config.

  python benchmarks/train_step.py [--config configs/inception_v3.py] [--batch 16]
      [--image-size 299] [--dtype auto] [--windows 3] [--steps 2]
      [--peers keras,torchvision]

Images/s is the median over `windows` timed windows of `steps` steps each,
after compilation (one untimed step). `matmul_fraction` is the step's FLOP/s
(XLA's cost analysis of the compiled step) over the matmul's. The last line
is one JSON object: `images_per_sec`, `keras_images_per_sec`,
`torchvision_images_per_sec` (null where not measured), `ratio_vs_keras`,
`matmul_fraction`, `compile_seconds`, `peak_memory_bytes` (where the device
reports it), and the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from inception_jax import (compat, config_lib, models, optim, parallel, train,  # noqa: E402
                           trainstate)


def timed(step, windows: int, steps: int, batch: int) -> float:
  """Median images/s over `windows` windows of `steps` calls of `step()`
  (which returns something to block on)."""
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      out = step()
    jax.block_until_ready(out)
    rates.append(steps * batch / (time.perf_counter() - start))
  return statistics.median(rates)


def matmul_flops_per_sec(n: int = 2048, repeats: int = 5) -> float:
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(seconds)


def compiled_train_step(config, image_size: int):
  """This project's train step for `config` (its `batch_size`, and its
  `optim.grad_accum_steps` micro-batches one after another), compiled for
  all devices, with a fresh state and a random uint8 batch on them (the
  pixels the input pipeline delivers; the step scales them). Returns
  `(one, figures)`: `one()` runs a step and returns its loss to block on;
  `figures` holds `compile_seconds`, `step_flops` (XLA's cost analysis of
  the compiled step; with accumulation XLA counts the loop's body once) and
  `temp_bytes` (its peak temporary memory, `memory_analysis()`)."""
  batch_size, accum = config.batch_size, max(1, config.optim.grad_accum_steps)
  spec = models.InceptionSpec.from_config(config.model, dataset_classes=1000)
  mesh = parallel.data_mesh()
  tx = optim.make_optimizer(config.optim, steps_per_epoch=1000, global_batch=batch_size)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=1000,
                                          global_batch=batch_size)
  init, abstract = trainstate.trace_init(config, spec, image_size, tx,
                                         parallel.replicated(mesh))
  graphdef, _ = trainstate.graphdefs(abstract)
  shape = (accum, batch_size // accum) if accum > 1 else (batch_size,)
  sharding = parallel.micro_sharded(mesh) if accum > 1 else parallel.data_sharded(mesh)
  rng = np.random.default_rng(0)
  batch = {'image': jax.device_put(rng.integers(0, 256, (*shape, image_size, image_size, 3),
                                                dtype=np.uint8), sharding),
           'label': jax.device_put(rng.integers(0, 1000, shape).astype(np.int32), sharding)}
  start = time.perf_counter()
  step = jax.jit(train.make_train_step(graphdef, tx, schedule, config), donate_argnums=0)
  compiled = step.lower(init.out_info, batch, np.uint32(0)).compile()
  figures = {'compile_seconds': time.perf_counter() - start,
             'step_flops': float(compat.cost_analysis(compiled).get('flops', 0.0)),
             'temp_bytes': getattr(compiled.memory_analysis(), 'temp_size_in_bytes', None)}
  state = [init.lower().compile()(np.uint32(0))]

  def one():
    state[0], metrics = compiled(state[0], batch, np.uint32(0))
    return metrics['train/loss']
  return one, figures


def peak_memory_bytes(device=None) -> int | None:
  """The device allocator's peak since the process started; None where the
  backend keeps no such count (`memory_stats()` is None on a CPU)."""
  stats = (device or jax.devices()[0]).memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def benchmark_config(path: str, batch: int, image_size: int, dtype: str):
  """The config `ours` measures: `path`'s recipe at this batch, image size
  and compute dtype, the batch in one pass with one BatchNorm group."""
  return config_lib.load(path, {
      'batch_size': batch, 'data.image_size': image_size, 'model.dtype': dtype,
      'model.bn_group_size': 0, 'fit_batch': False, 'per_device_batch': 0,
      'optim.grad_accum_steps': 1})


def ours(args) -> dict:
  """This project's train step on all devices (the batch sharded over them)."""
  config = benchmark_config(args.config, args.batch, args.image_size, args.dtype)
  one, figures = compiled_train_step(config, args.image_size)
  one()
  rate = timed(one, args.windows, args.steps, args.batch)
  return {'images_per_sec': rate, 'compile_seconds': figures['compile_seconds'],
          'step_flops': figures['step_flops'], 'peak_memory_bytes': peak_memory_bytes()}


def keras_peer(args) -> float:
  import keras
  if args.dtype == 'bfloat16':
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
  model = keras.applications.InceptionV3(weights=None, classifier_activation=None,
                                         input_shape=(args.image_size, args.image_size, 3))
  model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.045, rho=0.9,
                                                   momentum=0.9, epsilon=1.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype('float32')
  labels = rng.integers(0, 1000, args.batch)
  model.train_on_batch(images, labels)                # compiles
  return timed(lambda: model.train_on_batch(images, labels), args.windows, args.steps,
               args.batch)


TORCHVISION = r'''
import json, statistics, sys, time
import torch, torchvision
batch, size, windows, steps = map(int, sys.argv[1:5])
bfloat16 = sys.argv[5] == 'bfloat16'
compiled = len(sys.argv) > 6 and sys.argv[6] == 'compile'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
# cuDNN picks its fastest convolutions for these shapes, as XLA's autotuning does.
torch.backends.cudnn.benchmark = True
# torchvision's aux head needs the 17×17 grid of a 299×299 input.
model = torchvision.models.inception_v3(weights=None, aux_logits=size >= 299, init_weights=False)
model = model.to(device, memory_format=torch.channels_last).train()
optimizer = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
forward = torch.compile(model) if compiled else model
images = torch.rand(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
labels = torch.randint(0, 1000, (batch,), device=device)
def sync():
  if device == 'cuda': torch.cuda.synchronize()
def step():
  with torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16):
    out = forward(images)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    if aux is not None:
      loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, labels, label_smoothing=0.1)
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
start = time.perf_counter()
step()                      # cuDNN's search; torch.compile's compilation
sync()
first = time.perf_counter() - start
rates = []
for _ in range(windows):
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  rates.append(steps * batch / (time.perf_counter() - start))
print(json.dumps({'images_per_sec': statistics.median(rates), 'device': device,
                  'torch': torch.__version__, 'torchvision': torchvision.__version__,
                  'compiled': compiled, 'first_step_seconds': first,
                  'peak_memory_bytes': torch.cuda.max_memory_allocated() if device == 'cuda'
                  else None}))
'''


def torchvision_run(batch: int, image_size: int, windows: int, steps: int, dtype: str,
                    compile: bool = False) -> dict | None:
  """torchvision's `inception_v3` train step (TORCHVISION above; `compile`:
  through `torch.compile`) in a process of its own: its JSON figures, None
  where PyTorch is not installed."""
  done = subprocess.run(
      [sys.executable, '-c', TORCHVISION, str(batch), str(image_size), str(windows),
       str(steps), dtype, 'compile' if compile else 'eager'], capture_output=True, text=True)
  if done.returncode != 0:
    if 'No module named' in done.stderr:
      return None
    raise RuntimeError(f'the torchvision peer failed:\n{done.stderr[-2000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def torchvision_peer(args) -> dict | None:
  """In a process of its own (torchvision's triton and TensorFlow, which
  Keras loads, do not share one); None where PyTorch is not installed."""
  return torchvision_run(args.batch, args.image_size, args.windows, args.steps, args.dtype)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='configs/inception_v3.py')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--image-size', type=int, default=299)
  parser.add_argument('--dtype', default='auto', choices=sorted(models.DTYPES))
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--peers', default='keras,torchvision',
                      help="comma-separated: keras, torchvision ('' for none)")
  args = parser.parse_args(argv)
  args.dtype = jnp.dtype(models.compute_dtype(args.dtype)).name      # 'auto' resolved
  peers = set(filter(None, args.peers.split(',')))
  device = jax.devices()[0]
  print(f'{jax.device_count()} × {device.device_kind} ({jax.default_backend()}), batch '
        f'{args.batch}, {args.image_size}×{args.image_size}, {args.dtype}; '
        f'{args.windows} windows of {args.steps} steps, median')
  ceiling = matmul_flops_per_sec()
  print(f'  2048² float32 matmul       {ceiling / 1e9:9.1f} GFLOP/s (one device)')
  mine = ours(args)
  fraction = (mine['step_flops'] * mine['images_per_sec'] / args.batch) / (
      ceiling * jax.device_count())
  print(f'  inception_jax train step   {mine["images_per_sec"]:9.2f} images/s   '
        f'(compile {mine["compile_seconds"]:.1f} s, {100 * fraction:.0f}% of the matmul rate)')
  keras_rate = keras_peer(args) if 'keras' in peers else None
  if keras_rate is not None:
    print(f'  Keras InceptionV3 (JAX)    {keras_rate:9.2f} images/s')
  torch_result = torchvision_peer(args) if 'torchvision' in peers else None
  if torch_result is not None:
    print(f'  torchvision inception_v3   {torch_result["images_per_sec"]:9.2f} images/s   '
          f'(PyTorch {torch_result["torch"]}, {torch_result["device"]})')
  result = {
      'images_per_sec': mine['images_per_sec'],
      'keras_images_per_sec': keras_rate,
      'torchvision_images_per_sec': torch_result and torch_result['images_per_sec'],
      'ratio_vs_keras': keras_rate and mine['images_per_sec'] / keras_rate,
      'matmul_fraction': fraction,
      'compile_seconds': mine['compile_seconds'],
      'peak_memory_bytes': mine['peak_memory_bytes'],
      'batch': args.batch, 'image_size': args.image_size, 'dtype': args.dtype,
      'devices': jax.device_count(), 'backend': jax.default_backend(),
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
