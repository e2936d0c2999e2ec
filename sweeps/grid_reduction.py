"""Section 5: how to shrink the grid (35→17 at Mixed_6a, 17→8 at Mixed_7a).
  efficient   inception_v3: parallel stride-2 pooling and conv branches (Fig. 10)
  pool_conv   max-pool 3×3/2, then a 3×3 conv to the output width (Fig. 9 left):
              cheap, but a representational bottleneck
  conv_pool   a 3×3 conv to the output width, then max-pool (Fig. 9 right):
              no bottleneck, "3 times more expensive" for the reduction

  python -m inception_jax sweep grid_reduction --workdir runs/grid --parallel 2
  python -m inception_jax cost --sweep grid_reduction:scale=paper
      5.71 / 6.16 / 10.02 G multiply-adds, 23.9 / 31.8 / 31.8 M parameters

Runtime at demo scale: 3 runs of ~2 min on 2 CPU cores.
Expected at paper scale (the paper's argument; it reports no accuracy for the
naive rows): pool_conv worse than efficient (21.2%, Table 3), conv_pool about as
good at 1.75× the cost; a difference below the seed spread (`--seeds 3`) is none.
Arg: scale=demo (default) | paper | tiny. Readings: docs/paper_notes.md, "Grid reduction".
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'

NONE = dict(top1_error=None, top5_error=None, cost_bn_ops=None)
# Paper figures (top-1 / top-5 error in %, cost in billions of ops).
PAPER = {
    'efficient': dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8),  # Table 3
    'pool_conv': NONE,
    'conv_pool': NONE,
}


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo')
  return [dict(name=name,
               config=f'{CONFIG}:model=inception_v3,scale={arg.scale}',
               overrides={'model.grid_reduction': name},
               paper=dict(PAPER[name]))
          for name in ('efficient', 'pool_conv', 'conv_pool')]
