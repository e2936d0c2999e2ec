"""The sweep that wrote this fixture: two tiny rows of 4 steps, a checkpoint
every 2 steps, the last one kept (see README.md)."""


def get_sweep(arg=None):
  overrides = {'total_steps': 4, 'checkpoint_every_steps': 2, 'keep_checkpoints': 1, 'batch_size': 16,
               'model.width_multiplier': 0.02, 'data.num_train': 64,
               'data.num_eval': 32, 'tracking.tensorboard': False,
               'tracking.wandb': False}
  return [dict(name=name, config='configs/inception_v3.py:scale=tiny',
               overrides=dict(overrides))
          for name in ('finished', 'stopped')]
