"""Section 4 and Fig. 8: the auxiliary classifier, with and without BN.
  aux_bn     inception_v3: aux head on Mixed_6e, its 768-wide "FC" layer
             batch-normalized ("BN-auxiliary", Table 3's last row)
  aux_no_bn  model.aux_bn=false: Table 3's "+ Factorized 7×7" row
  no_aux     model.aux_head=false (and loss.aux_weight=0, which it implies)

  python -m inception_jax sweep aux_head --workdir runs/aux_head --parallel 2
  python -m inception_jax cost --sweep aux_head:scale=paper   # the same for all:
      the head is training-only; its cost is `aux_params`/`aux_macs` in --json

Runtime at demo scale: 3 runs of ~2 min on 2 CPU cores.
Expected at paper scale: aux_bn 0.4 points of top-1 below aux_no_bn (21.2 vs
21.6%, Table 3), no_aux no better than aux_no_bn (Section 4; no paper figure).
0.4 points is about the seed spread: run `--seeds 3` and read `compare`'s Δ.
Arg: scale=demo (default) | paper | tiny. Readings: docs/paper_notes.md,
"Auxiliary classifier".
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'

# Paper figures, Table 3 (top-1 / top-5 error in %, cost in billions of ops).
PAPER = {
    'aux_bn': dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8),
    'aux_no_bn': dict(top1_error=21.6, top5_error=5.8, cost_bn_ops=4.8),
    'no_aux': dict(top1_error=None, top5_error=None, cost_bn_ops=None),
}


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo')
  rows = [
      ('aux_bn', {'model.aux_head': True, 'model.aux_bn': True}),
      ('aux_no_bn', {'model.aux_head': True, 'model.aux_bn': False}),
      ('no_aux', {'model.aux_head': False, 'loss.aux_weight': 0.0}),
  ]
  return [dict(name=name,
               config=f'{CONFIG}:model=inception_v3,scale={arg.scale}',
               overrides=overrides,
               paper=PAPER[name])
          for name, overrides in rows]
