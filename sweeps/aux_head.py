"""Section 4 and Fig. 8: the auxiliary classifier, with and without BN.

One auxiliary head sits on the last 17×17 block (Mixed_6e). The paper finds
it does not speed up early training but helps near the end, acting as a
regularizer: "the main classifier of the network performs better if the side
branch is batch-normalized or has a dropout layer" (Section 4).
  aux_bn     inception_v3: aux head, its 768-wide "FC" layer batch-normalized
             ("BN-auxiliary", Table 3's last row)
  aux_no_bn  model.aux_bn=false: the FC layer is conv + bias + ReLU, no BN;
             with the v3 recipe this is Table 3's "+ Factorized 7×7" row
             (the inception_v2_factorized_7x7 preset)
  no_aux     model.aux_head=false: no auxiliary head. The trainer then has no
             aux logits and the loss is the main loss alone, whatever
             loss.aux_weight says; the row sets loss.aux_weight=0 so its
             config says so too.

Paper figures: Table 3 gives the two aux-head rows (21.2% / 5.6% with BN,
21.6% / 5.8% without, both 4.8 Bn ops; the Fig. 8 caption's "0.4% absolute
gain in top-1"). The paper gives no figure for v3 without an aux head. The
aux head is used in training only: `inception_jax cost` reports the inference
network, so all three rows cost the same there (the head's own parameters
and multiply-adds are `aux_params` / `aux_macs` in `--json`).

Expected at paper scale: aux_bn 0.4 points of top-1 error below aux_no_bn
(Table 3), and no_aux no better than aux_no_bn (Section 4: the head helps
late in training). 0.4 points is about the seed-to-seed spread of an
ImageNet run: with fewer than three seeds a row (`--seeds 3`) the difference
cannot be told from noise; `inception_jax compare` says whether it can.

Arg: scale=demo (default) | paper | tiny.
  python -m inception_jax cost --sweep aux_head:scale=paper
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
