"""Section 3.1: ReLU vs linear activation inside the factorized convolutions.

When a large convolution is factorized into a sequence of smaller ones (the
two 3×3 in place of a 5×5, the 1×n then n×1 pairs), should the first layer of
each pair be linear, since only the linear part of the big convolution is
being factorized? The paper finds "linear activation was always inferior to
using rectified linear units in all stages of the factorization" (Section 3.1).
  relu     inception_v3: every layer is conv → BN → ReLU (the released model)
  linear   inception_v3 with model.factorized_activation=linear: the first
           layer of each factorized pair is conv → BN, no ReLU

Paper figures: Fig. 2's control experiment, "one of several" between two
Inception models, reaches 77.2% top-1 accuracy with two ReLU layers and
settles at 76.2% with linear + ReLU (22.8% and 23.8% top-1 error). Those
models are not said to be Inception-v3, and no top-5 error or cost is given.
The activation changes no parameter or multiply-add: both rows cost the same.

Expected at paper scale: relu about 1 point of top-1 error below linear
(Fig. 2), several times the seed-to-seed spread of an ImageNet run, so two or
three seeds a row should show it; `inception_jax compare` marks whether they do.

Arg: scale=demo (default) | paper | tiny.
  python -m inception_jax cost --sweep factorization_activation:scale=paper
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'

# Paper figures, Fig. 2 caption (top-1 accuracy → error in %).
PAPER = {
    'relu': dict(top1_error=22.8, top5_error=None, cost_bn_ops=None),
    'linear': dict(top1_error=23.8, top5_error=None, cost_bn_ops=None),
}


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo')
  rows = [
      ('relu', {'model.factorized_activation': 'relu'}),
      ('linear', {'model.factorized_activation': 'linear'}),
  ]
  return [dict(name=name,
               config=f'{CONFIG}:model=inception_v3,scale={arg.scale}',
               overrides=overrides,
               paper=PAPER[name])
          for name, overrides in rows]
