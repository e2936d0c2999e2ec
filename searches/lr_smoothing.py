"""A search over the learning rate (log-uniform 0.003–0.1) and label smoothing
(uniform 0–0.2) of the demo's momentum row: Inception-v2, momentum SGD, demo
scale. TPE proposes each trial (the first 5 at random); Hyperband stops weak
trials at steps 100, 300 and 900 (reduction factor 3).

  python -m inception_jax search lr_smoothing --workdir runs/lr_search --parallel 2
  python -m inception_jax search lr_smoothing --workdir runs/lr_search --parallel 2 --confirm 2 --top 1
  python -m inception_jax compare runs/lr_search --format html

Runtime: 20 trials, 2 at a time on 2 CPU cores, ~10 min (a full trial 1.5–2 min,
one pruned at step 100 ~30 s); `--confirm 2 --top 1` adds 4 runs, ~3 min.
Expected (one run): 4 complete and 16 pruned trials, pruning saved 51% of the
steps; the best at learning rate 0.0147 (8.8% top-1 error), between lr_grid's 0.01
and 0.02. Step 100 lies in the warm-up, so that rung prunes on noise; the momentum
row's seeds lie far apart, so confirmations vary widely (24.5 ± 22.2%).
Arg: scale=demo (default) | tiny (6 steps, rungs at 2 and 6: for tests);
trials=N (default 20); seed=S (TPE's, default 0).
"""

from inception_jax import config_lib, search

CONFIG = 'configs/inception_v3.py:model=inception_v2,scale={scale}'


def get_search(arg=None):
  arg = config_lib.parse_arg(arg, scale='demo', trials=20, seed=0)
  if arg.scale not in ('demo', 'tiny'):
    raise config_lib.ConfigError(f'scale must be demo or tiny, got {arg.scale!r}')
  tiny = arg.scale == 'tiny'
  return search.Search(
      config=CONFIG.format(scale=arg.scale),
      overrides={'optim.name': 'momentum'},
      space={'optim.learning_rate': search.LogUniform(0.003, 0.1),
             'loss.label_smoothing': search.Uniform(0.0, 0.2)},
      objective='eval/top1_error',
      direction='minimize',
      sampler=search.Sampler('tpe', seed=arg.seed, startup_trials=5),
      pruner=search.Pruner('hyperband', min_steps=2 if tiny else 100, reduction_factor=3),
      trials=arg.trials)
