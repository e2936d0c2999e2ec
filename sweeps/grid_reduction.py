"""Section 5: how to shrink the grid (35→17 at Mixed_6a, 17→8 at Mixed_7a).

Fig. 9 shows the two naive ways to halve the grid while widening the filter
bank; Fig. 10 the paper's efficient one, used in Inception-v3 (Section 5):
  efficient   inception_v3: parallel stride-2 pooling and stride-2 conv
              branches, concatenated (Fig. 10; Mixed_6a/Mixed_7a as released)
  pool_conv   max-pool 3×3/2, then a 3×3 conv to the block's output width
              (Fig. 9 left): cheap, but a representational bottleneck
  conv_pool   a 3×3 conv to the block's output width at full resolution, then
              max-pool 3×3/2 (Fig. 9 right): no bottleneck, but "3 times more
              expensive computationally" (the paper's word for the reduction)
Every other layer is unchanged; the two reductions take the same design.
At paper scale the whole network costs 5.71 / 6.16 / 10.02 G multiply-adds
with 23.9 / 31.8 / 31.8 M parameters: the naive reductions' 3×3 convs widen
straight to 768 and 1280 channels (`inception_jax cost` below).

Paper figures: the paper reports no accuracy for the naive reductions, only
the cost argument. The `efficient` row is Inception-v3 itself, so it carries
Table 3's last row (21.2% / 5.6%, 4.8 Bn ops); the other rows have none.

Expected at paper scale (the paper's argument, not a measurement):
pool_conv worse than efficient (its bottleneck), conv_pool about as good at
1.75× the multiply-adds. A difference smaller than the spread of the sweep's
own seeds (`--seeds 3`, `inception_jax compare`) is no difference.

Arg: scale=demo (default) | paper | tiny.
  python -m inception_jax cost --sweep grid_reduction:scale=paper
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
