"""A block of your own against Inception-v3, selected from the command line.
  v3           inception_v3 as released
  v3_asym35    the 35×35 blocks (Mixed_5b–5d) replaced by notebooks/my_blocks.py's
               inception_a_asym (Section 3.2: asymmetric factorization does not
               work well early)
`model.imports` imports the file in every process that builds the model, so its
`blocks.register` makes the block selectable as `model.blocks.grid_35`.

  python -m inception_jax cost --sweep new_factorization
  python -m inception_jax sweep new_factorization --workdir runs/new_factorization
  python -m inception_jax compare runs/new_factorization

Runtime at demo scale: 2 rows × 2 seeds of ~2 min on 2 CPU cores.
Expected: no paper figure (the paper states the remark without a measurement).
Arg: scale=demo (default) | paper (3 seeds) | tiny (1 seed, for the tests).
"""

from inception_jax import config_lib

CONFIG = 'configs/inception_v3.py'
BLOCK_FILE = 'notebooks/my_blocks.py'
SEEDS = {'paper': [0, 1, 2], 'demo': [0, 1], 'tiny': [0]}
NONE = dict(top1_error=None, top5_error=None, cost_bn_ops=None)


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo')
  config = f'{CONFIG}:model=inception_v3,scale={arg.scale}'
  asym = {'model.imports': BLOCK_FILE, 'model.blocks.grid_35': 'inception_a_asym'}
  return [dict(name='v3', config=config, overrides={}, paper=dict(NONE),
               seeds=SEEDS[arg.scale]),
          dict(name='v3_asym35', config=config, overrides=asym, paper=dict(NONE),
               seeds=SEEDS[arg.scale])]
