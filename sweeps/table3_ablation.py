"""Table 3: the cumulative ablation from Inception-v2 to Inception-v3.

Each row adds one change to the previous (Section 10):
  inception_v2             momentum SGD, no label smoothing, 7×7 stem, aux FC without BN
  v2_rmsprop               + RMSProp (decay 0.9, ε 1.0)
  v2_label_smoothing       + label smoothing 0.1
  v2_factorized_7x7        + the 7×7 stem factorized into three 3×3
  inception_v3             + batch-normalized auxiliary FC ("BN-auxiliary")

  python -m inception_jax sweep table3_ablation --workdir runs/table3 --parallel 2
  python -m inception_jax compare runs/table3
  python -m inception_jax cost --sweep table3_ablation:scale=paper

Runtime at demo scale (`make demo`): ~9 min on 2 CPU cores, 10 runs of 1–2.5 min.
Expected at paper scale: Table 3's steps in top-1 error, 0.3, 0.3, 1.2, 0.4
points, about the seed-to-seed spread: three seeds a row, and `compare`'s
Δ columns mark the steps that exceed it. At demo scale: momentum behind
RMSProp with its seeds far apart, the other four rows tied at the ceiling.
Arg: scale=demo (default) | paper | tiny. Readings (the momentum row's rate,
what ε = 1.0 does, the 7×7 row's receptive field): docs/paper_notes.md,
"RMSProp's epsilon", "The demo recipe", "Receptive field of the factorized stem".
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'

# Paper figures, Table 3 (top-1 / top-5 error in %, cost in billions of ops).
PAPER = {
    'inception_v2': dict(top1_error=23.4, top5_error=None, cost_bn_ops=3.8),
    'v2_rmsprop': dict(top1_error=23.1, top5_error=6.3, cost_bn_ops=3.8),
    'v2_label_smoothing': dict(top1_error=22.8, top5_error=6.1, cost_bn_ops=3.8),
    'v2_factorized_7x7': dict(top1_error=21.6, top5_error=5.8, cost_bn_ops=4.8),
    'inception_v3': dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8),
}


# The demo's momentum learning rate, from the study in sweeps/lr_grid.py's docstring.
MOMENTUM_DEMO_LR = 0.02
# Seeds per row: a difference means something only against their spread.
SEEDS = {'demo': [0, 1], 'paper': [0, 1, 2], 'tiny': None}


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo')
  momentum = {'optim.name': 'momentum', 'loss.label_smoothing': 0.0}
  if arg.scale == 'demo':
    momentum['optim.learning_rate'] = MOMENTUM_DEMO_LR
  rows = [
      ('inception_v2', 'inception_v2', momentum),
      ('v2_rmsprop', 'inception_v2', {'loss.label_smoothing': 0.0}),
      ('v2_label_smoothing', 'inception_v2', {}),
      ('v2_factorized_7x7', 'inception_v2_factorized_7x7', {}),
      ('inception_v3', 'inception_v3', {}),
  ]
  return [dict(name=name,
               config=f'{CONFIG}:model={model},scale={arg.scale}',
               overrides=overrides,
               paper=PAPER[name],
               seeds=SEEDS.get(arg.scale))
          for name, model, overrides in rows]
