"""An example hyperparameter grid: learning rate × label smoothing.

Not a study from the paper: a template for tuning the recipe at a new scale.
Each run takes the scale's learning rate (0.045 at paper and tiny scale, 1e-3
at demo) times a factor in FACTORS, and each label smoothing in SMOOTHINGS,
with everything else as in the config:
  lr{LR}_ls{EPS}   e.g. at demo: lr3e-4_ls0, lr3e-4_ls0.1, lr1e-3_ls0,
                   lr1e-3_ls0.1, lr3e-3_ls0, lr3e-3_ls0.1

To change the grid, edit FACTORS and SMOOTHINGS below (the arg cannot hold
lists: its items are separated by commas), or copy this file and add
another key to the `overrides` of each run (e.g. 'optim.epsilon').

Paper figures: only the paper's own recipe (0.045, ε = 0.1, Inception-v3)
has them: Table 3's last row (21.2% / 5.6%, 4.8 Bn ops), at paper scale.

Expected: no figure from the paper. A grid point is better than its
neighbours only where the difference exceeds the spread of its seeds
(`--seeds 3`, `inception_jax compare`); with one seed the best point of a grid is
partly luck.

Arg: scale=demo (default) | paper | tiny; model=PRESET (default inception_v3);
optim=rmsprop | momentum (default: the config's); lrs=A/B/… (learning rates
in place of the factors) and smoothings=A/B/… (in place of SMOOTHINGS).
  python -m inception_jax cost --sweep lr_grid:scale=paper
  # the study that chose the demo's momentum learning rate (README):
  python -m inception_jax sweep lr_grid:model=inception_v2,optim=momentum,lrs=0.01/0.02/0.03,smoothings=0 \
      --seeds 2 --parallel 2 --workdir runs/momentum_lr
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'
FACTORS = (0.3, 1.0, 3.0)      # × the scale's optim.learning_rate
SMOOTHINGS = (0.0, 0.1)        # loss.label_smoothing

NONE = dict(top1_error=None, top5_error=None, cost_bn_ops=None)
# Table 3's last row: Inception-v3 trained with the paper's recipe.
PAPER_RECIPE = dict(top1_error=21.2, top5_error=5.6, cost_bn_ops=4.8)


def _short(x: float) -> str:
  """1e-3 → '1e-3', 0.045 → '4.5e-2', 0.0135 → '1.35e-2'."""
  mantissa, exponent = f'{x:.3e}'.split('e')
  mantissa = mantissa.rstrip('0').rstrip('.')
  return f'{mantissa}e{int(exponent)}'


def _numbers(text: str, what: str) -> list[float]:
  """'0.01/0.03/0.1' → [0.01, 0.03, 0.1] (the arg separates its items by commas)."""
  try:
    values = [float(x) for x in text.split('/') if x.strip()]
  except ValueError:
    values = []
  if not values:
    raise config_lib.ConfigError(f'{what} must be numbers separated by "/", got {text!r}')
  return values


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo', model='inception_v3', optim='',
                             lrs='', smoothings='')
  config = f'{CONFIG}:model={arg.model},scale={arg.scale}'
  base = config_lib.load(config)
  extra = {}
  if arg.optim:
    if arg.optim not in ('rmsprop', 'momentum'):
      raise config_lib.ConfigError(f'optim must be rmsprop or momentum, got {arg.optim!r}')
    extra['optim.name'] = arg.optim
  lrs = (_numbers(arg.lrs, 'lrs') if arg.lrs else
         [float(f'{base.optim.learning_rate * factor:.6g}') for factor in FACTORS])
  smoothings = _numbers(arg.smoothings, 'smoothings') if arg.smoothings else SMOOTHINGS
  runs = []
  for lr in lrs:
    for smoothing in smoothings:
      paper_recipe = (arg.scale == 'paper' and arg.model == 'inception_v3' and
                      lr == 0.045 and smoothing == 0.1 and arg.optim in ('', 'rmsprop'))
      runs.append(dict(
          name=f'lr{_short(lr)}_ls{smoothing:g}',
          config=config,
          overrides={**extra, 'optim.learning_rate': lr, 'loss.label_smoothing': smoothing},
          paper=dict(PAPER_RECIPE if paper_recipe else NONE)))
  return runs
