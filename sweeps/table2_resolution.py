"""Table 2: receptive field (input resolution) at about equal compute.

Three networks that differ only in their stem, each fed the input size that
reaches v3's 35×35 grid at Mixed_5b, so the rest is the same (Section 9):
  rf299   inception_v3         299×299; stride 2 and max pooling after the first layer
  rf151   inception_v3_rf151   151×151; stride 1 and max pooling after the first layer
  rf79    inception_v3_rf79     79×79; stride 1 and no pooling after the first layer

  python -m inception_jax sweep table2_resolution --workdir runs/table2 --parallel 2
  python -m inception_jax cost --sweep table2_resolution:scale=paper   # 5.71 / 5.71 / 5.25 G

Runtime at demo scale: 3 runs of 1000 steps at inputs 75 / 39 / 23, each at most
the ~2 min of a demo run on 2 CPU cores.
Expected at paper scale: top-1 error 23.4 / 23.6 / 24.8% (Table 2): rf151 within
the seed-to-seed spread of rf299, rf79 about 1.4 points worse; run `--seeds 3`.
Arg: scale=demo (default) | paper | tiny; image_size=S overrides v3's size.
Readings (the sizes at small scale, rf79 costing 8 % less, not "within 1%"):
docs/paper_notes.md, "Table 2 at small scale", "rf79's cost", "Table 2 resolutions".
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
