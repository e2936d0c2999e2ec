"""A search over the learning rate and label smoothing of the demo's momentum row.

What: Inception-v2 with momentum SGD at demo scale, as
`sweeps/lr_grid.py:model=inception_v2,optim=momentum` trains it (1000 steps,
evaluated every 100), with `optim.learning_rate` drawn log-uniformly from
0.003–0.1 and `loss.label_smoothing` uniformly from 0–0.2. TPE proposes each
trial (seed 0; the first 5 at random); Hyperband stops weak trials at its
rungs, steps 100, 300 and 900 (reduction factor 3).

  python -m inception_jax search lr_smoothing --workdir runs/lr_search --parallel 2
  python -m inception_jax search lr_smoothing --workdir runs/lr_search --parallel 2 --confirm 2 --top 1
  python -m inception_jax compare runs/lr_search --format html

Runtime: 20 trials, 2 at a time on 2 CPU cores: 10 min (with other work on
the cores); a trial trained to the end takes 1.5–2 min, one pruned at step
100 about 30 s (each learning rate compiles its own train step). `--confirm 2
--top 1` adds 4 runs, 3 min.

Expected: one run gave 4 complete and 16 pruned trials, 9,800 steps trained
of 20,000 (pruning saved 51%) and the best trial at learning rate 0.0147
(8.8% top-1 error), between the `lr_grid` study's 0.01 and its choice, 0.02
(README, "A learning rate for the momentum row"); every rate above 0.03 or
below 0.008 was pruned. Step 100 lies in the warm-up, where every trial is
near chance: that rung prunes on noise (it stopped one at 0.0207). The
confirmation gave the best 24.5 ± 22.2% over 2 seeds against the base
config's 83.7 ± 1.8% (momentum at the config's 1e-3; p 0.16): the momentum
row's seeds lie far apart.

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
