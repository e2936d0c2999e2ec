"""Section 3.1: ReLU vs linear activation inside the factorized convolutions.
  relu     inception_v3: every layer conv → BN → ReLU (the released model)
  linear   model.factorized_activation=linear: the first layer of each
           factorized pair (two 3×3 for a 5×5, 1×n then n×1) is conv → BN

  python -m inception_jax sweep factorization_activation --workdir runs/act --parallel 2
  python -m inception_jax cost --sweep factorization_activation:scale=paper   # equal

Runtime at demo scale: 2 runs of ~2 min on 2 CPU cores.
Expected at paper scale: relu about 1 point of top-1 error below linear (Fig. 2's
control experiment: 22.8 vs 23.8%, models not said to be v3), several times the
seed spread, so two or three seeds a row should show it in `compare`.
Arg: scale=demo (default) | paper | tiny. Readings: docs/paper_notes.md,
"Factorization".
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
