"""Table 3: the cumulative ablation from Inception-v2 to Inception-v3.

Each row adds one change to the previous (Section 10):
  inception_v2             momentum SGD, no label smoothing, 7×7 stem, aux FC without BN
  v2_rmsprop               + RMSProp (decay 0.9, ε 1.0)
  v2_label_smoothing       + label smoothing 0.1
  v2_factorized_7x7        + the 7×7 stem factorized into three 3×3
  inception_v3             + batch-normalized auxiliary FC ("BN-auxiliary")

The paper gives no learning rate for its momentum runs. At paper scale the v2
row keeps the recipe's schedule (0.045, ×0.94 every 2 epochs) with momentum
0.9; at demo scale it uses MOMENTUM_DEMO_LR, the best rate of a study with
`sweeps/lr_grid.py` (README, "A learning rate for the momentum row").

What the RMSProp row changes. TensorFlow's RMSProp with the paper's ε = 1.0
inside the square root steps by lr·g/√(ms + 1), ms the running mean of g²
(initialised to 1). Once a coordinate's squared gradients are ≪ 1 — most of
them, after the first steps — √(ms + 1) ≈ 1 and the step is lr·g: momentum SGD
at the same rate. The row differs from the momentum row where gradients are
of order 1 or more, which it damps (a per-coordinate soft clip), mostly early
in training. Its 0.3-point gain is therefore a statement about damping large
gradients at rate 0.045, not about adaptive per-coordinate rates; the logs
show how large the gradients are (`train/grad_norm`, and `train/clip_norm`,
`train/clipped` for the global clipping at 2.0).

Expected at paper scale: each row's top-1 error below the previous row's by
Table 3's steps, 0.3 (RMSProp), 0.3 (label smoothing), 1.2 (factorized 7×7)
and 0.4 points (BN-auxiliary). Steps of 0.3–0.4 points are about the
seed-to-seed spread of an ImageNet run, so a row's difference means something
only where it exceeds the spread of the sweep's own seeds: each row runs three
seeds at paper scale and two at demo scale (SEEDS; `--seeds N` replaces them),
and the Δ columns of `inception_jax compare` mark the differences that exceed the
spread (Welch's t-test, stated in the table's footer).

Expected at demo scale (a shared miniature recipe on synthetic data, README):
momentum SGD behind RMSProp, its seeds far apart (the fragile row: one may
learn late; two seeds cannot mark the gap significant); the other four rows
at the ceiling, within 0.5 points of each other, so the demo cannot order
them by error (the report's tie table compares them by eval loss, where label
smoothing sits higher by construction, and by how soon they reach 5 %).

Arg: scale=demo (default) | paper | tiny.
  python -m inception_jax cost --sweep table3_ablation:scale=paper
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


# The demo's momentum learning rate, from the study in the README.
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
