"""Inception-v3 and every Inception-v2 row of Table 3, on ImageNet or synthetic data.

  python -m inception_jax train --config inception_v3:scale=demo --workdir runs/demo
      ~2 min on 2 CPU cores; eval/top1_error below 10% (chance 90%)
  python -m inception_jax train --config inception_v3:scale=tiny --workdir runs/tiny
      under a minute (mostly compilation); near chance: for tests
  python -m inception_jax train --config inception_v3 --workdir runs/v3 --config.data.data_dir=DIR
      the paper's recipe (Section 8) on ImageNet (docs/data.md): 100 epochs at batch 1600; the paper
      reports 21.2% top-1 error, not yet reproduced with this code
  python -m inception_jax cost --config inception_v3 --json     # ~5 s
      23,851,784 parameters, 5,713,216,096 multiply-adds at 299×299

Arg: model=PRESET (inception_v3 | inception_v2 | inception_v2_factorized_7x7 |
inception_v3_rf151 | inception_v3_rf79), scale=paper (default) | demo | tiny.
Any key can be overridden: --config.model.width_multiplier=0.5, ...
How the batch is laid out on D devices (`python -m inception_jax layout`):
docs/paper_scale.md. Why the settings: docs/paper_notes.md, "Training recipe"
and "The demo recipe".
"""

import ml_collections

from inception_jax import config_lib, models, rundir

SCALES = {
    #        width, min_depth, image size (None: the preset's), modules per grid
    'paper': (1.0, 16, None, models.RELEASED_MODULES),
    'demo': (0.125, 8, 75, models.RELEASED_MODULES),
    # Every kind of layer once, with half the layers to trace and compile.
    'tiny': (0.05, 4, 75, (1, 1, 1)),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model='inception_v3', scale='paper')
  if arg.scale not in SCALES:
    raise config_lib.ConfigError(f'scale must be one of {sorted(SCALES)}, got {arg.scale!r}')
  width, min_depth, image_size, modules = SCALES[arg.scale]
  spec = models.preset(arg.model, width_multiplier=width, min_depth=min_depth,
                       modules_per_grid=modules)

  config = ml_collections.ConfigDict()
  # The form of this config, recorded with each run: a run directory of an
  # earlier form is read through its migrations (inception_jax/rundir.py).
  config.config_version = rundir.CONFIG_VERSION
  config.seed = 0
  config.model = spec.to_dict()
  # How convolutions are computed (inception_jax/convolution.py): 'auto' is
  # the matrix-product forms XLA:CPU runs faster ('cpu_matmul') on a CPU and
  # XLA's convolution ('xla') elsewhere; the same values up to float rounding.
  # A run records the resolved one in config.json and result.json.
  config.model.conv_impl = 'auto'
  # Fine-tuning (inception_jax/transfer.py): start from trained weights —
  # 'run:DIR', 'keras', 'keras:FILE', 'tf_slim:CHECKPOINT' or
  # 'torchvision:FILE' ('': random) — and keep the parameters whose name
  # this regular expression matches from the start fixed ('': none), e.g.
  # 'stem|Mixed_[56]' trains Mixed_7a onwards and the heads.
  config.init_from = ''
  config.freeze = ''

  config.data = ml_collections.ConfigDict(dict(
      name='tfds:imagenet2012',       # | 'synthetic' | 'folder' | 'tfds:NAME'
      data_dir='',                    # TFDS data directory ('' = TFDS default)
      path='',                        # folder: ROOT/{train,validation}/<class>/*
      train_split='train',
      eval_split='validation',
      image_size=image_size or spec.default_image_size,
      num_classes=10,                 # synthetic only
      num_train=4096,                 # synthetic only
      num_eval=500,                   # synthetic only
      object_size=(0.16, 0.26),       # synthetic only: object radius / image size
      # Training crops and colours as Google's Inception preprocessing:
      # TensorFlow's sample_distorted_bounding_box (area in [crop_area_min, 1],
      # covering >= min_object_covered of the image, crop_attempts tries) and
      # its colour distortion ('inception'; 'none' turns it off).
      crop_sampler='tensorflow',      # | 'uniform_area' (area drawn uniformly; 10 attempts)
      crop_area_min=0.05,
      crop_attempts=100,
      min_object_covered=0.1,
      color_distort='inception',      # | 'none'
      eval_central_fraction=0.875,
      # A file of validation images to leave out, one file name (or ILSVRC
      # number N: ILSVRC2012_val_N) per line: the paper evaluates on the 48,238
      # images outside the ILSVRC 2014 blacklist, which you supply.
      eval_exclude='',
      skip_corrupt=False,             # True: skip undecodable images, counted in the log
      num_workers=0,                  # Grain worker processes (0: threads only)
      num_threads=8,                  # reader threads per process
      prefetch=256,                   # examples read ahead
  ))
  if arg.scale == 'paper':
    # The paper's 50 replicas: BatchNorm statistics per 32 examples, and the
    # moving averages updated once per group (0.9997 per update ≈ 0.985 per step).
    # Compute in bfloat16 on GPUs and TPUs (parameters, BatchNorm statistics
    # and the loss stay float32), in float32 on a CPU.
    config.model.update(bn_group_size=32, bn_update_per_group=True, dtype='auto')
  else:
    config.data.name = 'synthetic'
    # The class follows the dataset (`data.num_classes` for synthetic data).
    config.model.num_classes = ml_collections.config_dict.placeholder(int)
    # Generous crops keep the drawn objects in view; plain colours.
    config.data.update(crop_sampler='uniform_area', crop_area_min=0.35, crop_attempts=10,
                       color_distort='none')
  if arg.scale == 'tiny':
    config.data.update(num_train=256, num_eval=100, num_threads=2)

  # The paper's recipe (Section 8; docs/paper_notes.md#training-recipe).
  config.batch_size = 1600            # 50 replicas × 32: examples per optimizer step
  # How a step's batch is computed (parallel.batch_layout). At paper scale:
  # micro-batches of at most 64 images per device, one after another
  # (gradient accumulation), BatchNorm per 32 as on the paper's replicas,
  # the batch moved to the nearest size this device count splits into whole
  # groups of 32 (and the rate scaled with it). docs/paper_scale.md.
  config.per_device_batch = 64 if arg.scale == 'paper' else 0   # 0: no limit
  config.fit_batch = arg.scale == 'paper'
  config.num_epochs = 100.0
  config.total_steps = 0              # > 0 overrides num_epochs
  config.log_every_steps = 100
  config.eval_every_steps = 10_000    # 0: evaluate at the end only
  config.checkpoint_every_steps = 1000  # 0: at the end (and on SIGTERM) only
  config.keep_checkpoints = 3         # the last N are kept
  # > 0: a jax.profiler trace of this many steps after the first (compiled)
  # one, in WORKDIR/profile/ (TensorBoard's profile tab, or Perfetto).
  config.profile_steps = 0
  config.optim = ml_collections.ConfigDict(dict(
      name='rmsprop',                 # or 'momentum' (Table 3's first row)
      learning_rate=0.045,
      decay_epochs=2.0,
      decay_rate=0.94,
      rms_decay=0.9,
      epsilon=1.0,
      momentum=0.9,
      grad_clip_norm=2.0,
      weight_decay=4e-5,
      ema_decay=0.9999,
      warmup_epochs=0.0,              # linear warm-up (not in the paper)
      # > 0: lr × batch_size / base_batch_size (paper scale: when fit_batch
      # moves the batch off 1600).
      base_batch_size=1600 if arg.scale == 'paper' else 0,
      # Micro-batches per step (gradient accumulation); 0: the fewest that
      # keep per_device_batch.
      grad_accum_steps=0 if arg.scale == 'paper' else 1,
  ))
  config.loss = ml_collections.ConfigDict(dict(
      label_smoothing=0.1,
      aux_weight=0.4,
  ))
  config.tracking = ml_collections.ConfigDict(dict(
      tensorboard=True,
      wandb=True,                     # when installed; False: no wandb at all
      wandb_mode='offline',           # offline | online | disabled (WANDB_MODE overrides)
      wandb_init_timeout=30.0,        # seconds; then the run goes on without wandb
      wandb_project='inception_jax',
      wandb_group='',                 # sweeps set this to the sweep's name
      # A sweep sets these for each run: its name ROW/seed_K (wandb's run name
      # and the log lines'; default the workdir's name), its row (wandb's job
      # type), the key=value pairs its row changes (wandb's tags) and the keys
      # that vary across the sweep (listed first in TensorBoard's HParams).
      run_name='',
      job_type='',
      tags=[],
      hparams_first=[],
      progress=True,                  # progress bar on a terminal
  ))

  # Resources of a run launched with `inception_jax sweep --launcher slurm`
  # (0 or '' leaves the cluster's default). `tasks_per_node` processes on
  # each node (1: one process drives all its GPUs); a run of several tasks
  # joins them through jax.distributed.
  config.slurm = ml_collections.ConfigDict(dict(
      partition='',
      nodes=1,
      tasks_per_node=1,
      gpus_per_node=8 if arg.scale == 'paper' else 0,
      cpus_per_task=16 if arg.scale == 'paper' else 2,
      mem_gb=0,
      time_minutes=72 * 60 if arg.scale == 'paper' else 60,
  ))

  if arg.scale == 'demo':
    # About 2 minutes on 2 CPU cores; why each setting: docs/paper_notes.md,
    # "The demo recipe".
    config.batch_size = 32
    config.total_steps = 1000
    config.log_every_steps = 10
    # Ten points a curve for the report (500 images, about a second each).
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 500
    config.data.crop_area_min = 0.8
    config.data.object_size = (0.3, 0.4)
    config.model.bn_momentum = 0.9
    config.optim.update(learning_rate=1e-3, epsilon=1e-3, grad_clip_norm=0.0,
                        warmup_epochs=1.0)
  elif arg.scale == 'tiny':
    config.batch_size = 16
    config.total_steps = 6
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.tracking.wandb = False
  return config
