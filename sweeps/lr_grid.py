"""An example grid, learning rate × label smoothing: a template for tuning the
recipe at a new scale (not a study from the paper). Each run takes the scale's
learning rate (0.045 paper and tiny, 1e-3 demo) × FACTORS and each of SMOOTHINGS,
named lr{LR}_ls{EPS} (at demo: lr3e-4_ls0 … lr3e-3_ls0.1, six runs).

  python -m inception_jax cost --sweep lr_grid:scale=paper
  # the study that chose the demo's momentum rate, 0.02 (3 rates × 2 seeds):
  python -m inception_jax sweep lr_grid:model=inception_v2,optim=momentum,lrs=0.01/0.02/0.03,smoothings=0 \
      --seeds 2 --parallel 2 --workdir runs/momentum_lr

Expected: no paper figure but for the paper's recipe (0.045, smoothing 0.1, v3:
21.2%, Table 3). With one seed the best point of a grid is partly luck: use
`--seeds 3` and `compare`. Arg: scale=demo (default) | paper | tiny; model=PRESET;
optim=rmsprop | momentum; lrs=A/B/… and smoothings=A/B/… replace the grid's axes
(the arg's items are separated by commas, so lists use "/").
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
