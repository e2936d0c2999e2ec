"""Table 2: receptive field (input resolution) at about equal compute.

Section 9 trains three networks that differ only in their stem, each fed the
input size its stem needs to reach the same 35×35 grid at Mixed_5b, so
everything after the stem is the same network and the compute is almost the
same (Section 9):
  rf299   inception_v3         299×299; stride 2 and max pooling after the first layer
  rf151   inception_v3_rf151   151×151; stride 1 and max pooling after the first layer
  rf79    inception_v3_rf79     79×79; stride 1 and no pooling after the first layer

Paper figures, Table 2 (top-1 accuracy, single frame): 76.6% / 76.4% / 75.2%
for 299 / 151 / 79, given below as top-1 error. The paper gives no top-5
error and no cost for these rows; it only says the costs are "almost
identical" (see `inception_jax cost` below: 5.71 / 5.71 / 5.25 G multiply-adds).
Some transcriptions of Table 2 print 75.2% for 151×151 too; the paper's table
has 76.4% (docs/paper_notes.md#table-2-resolutions).

Input sizes. The config fixes image_size=75 at demo and tiny scale for every
preset, which would feed the low-resolution stems a 75×75 image and so undo
the study. Scaling each preset's size by one factor does not work either:
75/299 ≈ 0.25 gives 38 and 20, below the rf151 and rf79 stems' minimum
inputs (39 and 23). This sweep keeps what the paper holds fixed instead:
inception_v3 runs at the scale's size S (the config's: 299 paper, 75 demo and
tiny), and each other stem at the smallest size whose stem output grid
equals v3's at S. Everything after the stem then runs on the same grids, as
in the paper. At paper scale this gives exactly 299 / 151 / 79; at demo and
tiny, 75 / 39 / 23 (a 7×7 grid after every stem; ratio 3.3 : 1.7 : 1
against the paper's 3.8 : 1.9 : 1), each of them the preset's smallest
valid input. The sizes go in `data.image_size`.

Expected at paper scale: rf151 within 0.2 points of rf299 (the paper's point:
at equal compute a lower resolution costs little) and rf79 about 1.4 points
worse. 0.2 points is below the seed-to-seed spread of an ImageNet run, so
rf299 and rf151 should not differ beyond the noise, and rf79 should; run at
least three seeds (`--seeds 3`) and read `inception_jax compare`'s Δ columns.

Arg: scale=demo (default) | paper | tiny; image_size=S overrides v3's size
(0: the scale's), e.g. image_size=107 for a demo with 11×11 grids.
  python -m inception_jax cost --sweep table2_resolution:scale=paper
"""

import functools

from flax import nnx

from inception_jax import blocks, config_lib, models

CONFIG = 'configs/inception_v3.py'

# Paper figures, Table 2 (top-1 accuracy → error in %; no top-5, no cost).
PAPER = {
    'rf299': dict(top1_error=23.4, top5_error=None, cost_bn_ops=None),
    'rf151': dict(top1_error=23.6, top5_error=None, cost_bn_ops=None),
    'rf79': dict(top1_error=24.8, top5_error=None, cost_bn_ops=None),
}
ROWS = (('rf299', 'inception_v3'),
        ('rf151', 'inception_v3_rf151'),
        ('rf79', 'inception_v3_rf79'))
REFERENCE = 'inception_v3'


@functools.lru_cache(maxsize=None)
def _stem(model: str):
  """The preset's stem, abstract and narrow: only its geometry is used."""
  spec = models.preset(model, width_multiplier=1e-3, min_depth=1)
  return nnx.eval_shape(lambda: blocks.STEMS[spec.stem](spec.builder(nnx.Rngs(0))))


def image_sizes(reference_size: int) -> dict[str, int]:
  """Input size of each row's model: v3 at `reference_size`, every other stem
  at the smallest size it turns into the same grid as v3's stem does."""
  grid = _stem(REFERENCE).out_size(reference_size)
  sizes = {}
  for _, model in ROWS:
    if model == REFERENCE:
      sizes[model] = reference_size
    else:
      sizes[model] = next(s for s in range(1, reference_size + 1)
                          if _stem(model).out_size(s) >= grid)
  return sizes


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo', image_size=0)
  config = f'{CONFIG}:model={REFERENCE},scale={arg.scale}'
  reference = arg.image_size or config_lib.load(config).data.image_size
  sizes = image_sizes(reference)
  return [dict(name=name,
               config=f'{CONFIG}:model={model},scale={arg.scale}',
               overrides={'data.image_size': sizes[model]},
               paper=PAPER[name])
          for name, model in ROWS]
