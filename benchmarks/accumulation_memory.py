"""Memory of a train step with gradient accumulation, beside the same batch in
one pass.

For each effective batch B (default 8, 16, 32, 64) the full train step of
`configs/inception_v3.py` (paper recipe) is compiled twice at 299×299 in
float32: as one pass over B images, and as B/8 micro-batches of 8
(`optim.grad_accum_steps`). XLA's buffer assignment gives each program's
peak temporary memory (`compiled.memory_analysis()`, the figure JAX reports
on every backend; nothing is run). With accumulation it should stay at the
micro-batch's while the single pass grows with B.

  python benchmarks/accumulation_memory.py [--batches 8,16,32,64] [--micro 8]
      [--image-size 299] [--config configs/inception_v3.py]

One device (the figures are per device). Compiling the full network takes
about a minute per program on 2 CPU cores. The last line is one JSON object
with `batches`, `micro`, `accumulated_temp_bytes` and `single_pass_temp_bytes`
(lists in the order of `batches`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Buffer sizes do not depend on LLVM's optimizations: compile fast.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from inception_jax import config_lib, models, optim, parallel, train, trainstate  # noqa: E402


def temp_bytes(config, batch: int, accum: int, image_size: int) -> int:
  """Peak temporary memory of the compiled train step (bytes, one device)."""
  config = config_lib.load(config, {'batch_size': batch, 'optim.grad_accum_steps': accum,
                                    'model.bn_group_size': 0, 'data.image_size': image_size})
  spec = models.InceptionSpec.from_config(config.model, dataset_classes=config.data.num_classes)
  mesh = parallel.data_mesh()
  tx = optim.make_optimizer(config.optim, steps_per_epoch=100, global_batch=batch)
  schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch=100, global_batch=batch)
  init, abstract = trainstate.trace_init(config, spec, image_size, tx, parallel.replicated(mesh))
  graphdef, _ = trainstate.graphdefs(abstract)
  shape = (accum, batch // accum) if accum > 1 else (batch,)
  sharding = parallel.micro_sharded(mesh) if accum > 1 else parallel.data_sharded(mesh)
  images = jax.ShapeDtypeStruct((*shape, image_size, image_size, 3), jnp.float32,
                                sharding=sharding)
  labels = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  step = jax.jit(train.make_train_step(graphdef, tx, schedule, config), donate_argnums=0)
  compiled = step.lower(init.out_info, {'image': images, 'label': labels},
                        np.uint32(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/inception_v3.py')
  parser.add_argument('--batches', default='8,16,32,64')
  parser.add_argument('--micro', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=299)
  args = parser.parse_args(argv)
  batches = [int(b) for b in args.batches.split(',')]
  if jax.device_count() != 1:
    print('run on one device (the figures are per device)', file=sys.stderr)
    return 2
  accumulated, single = [], []
  print(f'train step, {args.image_size}×{args.image_size} float32, one device: '
        f'peak temporary memory (MiB)')
  print(f'{"batch":>6}  {f"{args.micro} × accumulation":>18}  {"one pass":>9}')
  for batch in batches:
    single.append(temp_bytes(args.config, batch, 1, args.image_size))
    accumulated.append(single[-1] if batch == args.micro else
                       temp_bytes(args.config, batch, batch // args.micro, args.image_size))
    print(f'{batch:>6}  {accumulated[-1] / 2**20:>18,.0f}  {single[-1] / 2**20:>9,.0f}',
          flush=True)
  print(json.dumps({'batches': batches, 'micro': args.micro,
                    'accumulated_temp_bytes': accumulated,
                    'single_pass_temp_bytes': single}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
