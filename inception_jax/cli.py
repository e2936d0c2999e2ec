"""The inception_jax command line: `python -m inception_jax COMMAND …`, the
same as the `inception-jax` console script that `pip install` puts on the
PATH (and `python launch.py COMMAND …` in a checkout).

  python -m inception_jax train --config CONFIG[:ARG] --workdir DIR [--config.KEY=VALUE ...]
      [--allow_config_change] [--from_step N] [--search-trial JOURNAL#N] [--dry-run]
  python -m inception_jax cost --config CONFIG[:ARG] [--json] [--config.KEY=VALUE ...]
  python -m inception_jax cost --sweep SWEEP[:ARG] [--json]
  python -m inception_jax sweep SWEEP[:ARG] --workdir DIR [--dry-run]
      [--launcher local|slurm] [--parallel N] [--only NAME,...] [--seeds N] [--rerun-stale]
  python -m inception_jax search SEARCH[:ARG] --workdir DIR [--trials N] [--parallel P]
      [--launcher local|slurm] [--confirm K [--top M]] [--dry-run]
  python -m inception_jax compare DIR [--format text|markdown|json|html]
  python -m inception_jax sync DIR [--dry-run]
  python -m inception_jax layout --config CONFIG[:ARG] [--devices 1,8,…] [--config.KEY=VALUE ...]
  python -m inception_jax eval --workdir RUN [--crops 1|12|144] [--ensemble RUN2 ...] [--weights ema|raw]
      [--split NAME] [--exclude FILE | --no-exclude] [--limit N] [--json]
  python -m inception_jax predict --workdir RUN [--weights ema|raw] [--json] IMAGE ...
  python -m inception_jax predict --weights FILE [--labels FILE] [--json] IMAGE ...
  python -m inception_jax prepare imagenet2012 --manual_dir DIR [--data_dir DIR]
  python -m inception_jax --version

CONFIG is a shipped config by name (`inception_v3`) or a config file
(`configs/inception_v3.py`, any FILE.py); SWEEP likewise (`table3_ablation`,
`sweeps/table3_ablation.py`). Names work from any directory: the shipped
files come with the package. `--config inception_v3:scale=demo` trains the
demo; `train --dry-run` prints the config, the batch layout and the cost and
writes nothing; `sweep --dry-run` lists the runs and their batch layout.

`train` on a workdir that holds checkpoints resumes from the latest good one
(a config that differs in more than harmless keys is refused, unless
--allow_config_change). SIGTERM, SIGINT or SIGUSR2 (SLURM's warning before a
time limit) finishes the current step, saves a checkpoint and exits; rerun the
same command to resume. `train` on a finished run changes nothing.

`prepare` builds a TFDS dataset (ImageNet from its tar files) as ArrayRecord,
the format training reads, or adds ArrayRecord files to one that TFDS
prepared as TFRecord.

`sweep` trains each run of a sweep file in DIR/NAME, or each of its seeds in
DIR/NAME/seed_K when the run has seeds (--seeds N: seeds 0 … N-1 for every
run), skipping finished runs and resuming interrupted ones; it prints a
summary and the comparison table; one sweep at a time per DIR. A run that
finished or saved a checkpoint under another config than the sweep file now
gives it (or in the other layout: one run where seeds now go, or the
reverse) is stale: reported, not retrained; --rerun-stale moves its
directory to DIR/NAME.stale-TIME and trains it again. `compare` prints the table of a sweep directory, one row
per run: mean ± standard deviation over its seeds and the difference to the
previous and the first row, marked where Welch's t-test finds it significant
(html: writes DIR/report.html). `sync` uploads every offline wandb run of a
sweep (or a run) directory with `wandb sync`.

`search` runs an Optuna study (SEARCH likewise: `lr_smoothing`,
`searches/lr_smoothing.py`; needs the `search` extra): the search file's
sampler proposes each trial's parameters, each trial trains in DIR/trial_NNN
and reports its evaluations, and the pruner stops weak trials early (exit 7,
saved). The study is a journal file, DIR/study.journal: no server, shared by
SLURM jobs. Rerunning the command continues the study; a driver killed while
its trials train takes them along (they save) and the rerun resumes them;
one search at a time per DIR, and a DIR holding another (or an edited)
search's study is refused. At the end it prints the best trial and the
training steps pruning saved; `--confirm K` then trains the base config and
the best --top M trials with K seeds (DIR/confirm) and prints their table.

Metrics follow one convention everywhere (logs, TensorBoard, wandb, result.json,
compare, eval, the report): top-1 and top-5 error in %, as the paper gives them.

Exit status: 0 done; 1 a sweep run failed (the others went on), or no search trial
completed; 2 an error a
user can cause (one line on stderr); 3 the loss or gradient became
non-finite; 4 stopped by SIGTERM/SIGINT/SIGUSR2 after saving checkpoints (rerun the
same command to resume; a search: rerun it to continue); 5 a sweep holds stale runs (--rerun-stale retrains them);
6 no space left on device (what was written is intact: free space and rerun the
same command to resume); 7 a search trial (train --search-trial) stopped early by
the study's pruner, its checkpoint saved (not a failure).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import sys

from inception_jax import compat, rundir
from inception_jax.errors import ExitCode, UserError


def _split_overrides(argv):
  """Separate `--config.KEY=VALUE` overrides from the other arguments."""
  overrides, rest = [], []
  for item in argv:
    if item.startswith('--config.'):
      if '=' not in item:
        raise UserError(f'{item}: write overrides as --config.KEY=VALUE')
      overrides.append(item[len('--config.'):])
    else:
      rest.append(item)
  return overrides, rest


def cmd_train(args, overrides):
  if args.dry_run:
    return _train_dry_run(args, overrides)
  from inception_jax import stopping
  # Signals become a stop request from the start, before JAX loads: one that
  # comes while starting or compiling stops the run like any other.
  with stopping.StopSignal() as stop:
    return _train(args, overrides, stop)


def _train(args, overrides, stop):
  from inception_jax import parallel
  parallel.initialize()      # before anything touches a device
  parallel.use_compilation_cache()
  from inception_jax import config_lib, train
  config = config_lib.load(args.config, overrides)
  _name_log_lines(train.run_name(config, args.workdir))
  if config.model.get('dtype') == 'float64':     # numerical checks: float64 throughout
    import jax
    jax.config.update('jax_enable_x64', True)
  trial = None
  if args.search_trial:
    import jax
    from inception_jax import pruning
    trial = pruning.TrialReporter.from_arg(args.search_trial,
                                           enabled=jax.process_index() == 0)
  try:
    result = train.run(config, args.workdir, allow_config_change=args.allow_config_change,
                       from_step=args.from_step, stop=stop, trial=trial)
  except train.Pruned as e:   # an outcome of the search, not an error: its result line
    print(e)
    return e.exit_code
  metrics = result['metrics']
  top1, top5 = rundir.error_percent(metrics, 'top1'), rundir.error_percent(metrics, 'top5')
  if top1 is not None:
    print(f"top-1 error {top1:.2f}%  top-5 error {top5:.2f}%  eval loss "
          f"{metrics['eval/loss']:.4f}  ({result['steps']} steps, "
          f"{result['wall_time_sec']:.0f} s) → {args.workdir}")
  return 0


def _train_dry_run(args, overrides) -> int:
  """`train --dry-run`: the config as config.json would record it (checked
  as `train` checks it, defaults filled in, `model.conv_impl` resolved), its
  batch on this machine's devices (`layout`) and its cost (`cost`); nothing
  is written, not even the run directory."""
  import jax
  from inception_jax import config_lib, cost, train
  config = config_lib.load(args.config, overrides)
  resolved = train.resolve_conv_impl(train.check_config(config))
  print(json.dumps(rundir.versioned(resolved.to_dict()), indent=2, sort_keys=True))
  print(f'\n{layout_table(config, [jax.device_count()])}')
  print(f'\n{_cost_text(config, cost.of_config(config))}')
  print(f'\ndry run: nothing written; without --dry-run this trains in {args.workdir}')
  return 0


def cmd_cost(args, overrides):
  from inception_jax import config_lib, cost, sweep
  if bool(args.config) == bool(args.sweep):
    raise UserError('cost needs exactly one of --config CONFIG[:ARG] or --sweep SWEEP[:ARG]')
  if args.config:
    config = config_lib.load(args.config, overrides)
    result = cost.of_config(config)
    if args.json:
      print(json.dumps(dict(result.to_dict(), model=config.model.to_dict())))
    else:
      print(_cost_text(config, result))
    return 0
  if overrides:
    raise UserError('--config.* overrides apply to --config, not to --sweep')
  rows = []
  for run in sweep.load_sweep(args.sweep):
    config = run.build_config()
    rows.append((run, config, cost.of_config(config)))
  if args.json:
    print(json.dumps([dict(c.to_dict(), name=r.name) for r, _, c in rows]))
  else:
    print(_cost_table(rows))
  return 0


def cmd_sweep(args, overrides):
  from inception_jax import report, sweep
  if overrides:
    raise UserError('--config.* overrides do not apply to a sweep; put them in '
                    'the sweep file')
  if args.dry_run:
    return _sweep_dry_run(args)
  if args.launcher == 'slurm':
    launcher = sweep.SlurmLauncher(args.workdir, train_job)
  else:
    launcher = sweep.LocalLauncher(args.parallel)
  outcomes = sweep.run_sweep(args.sweep, args.workdir, launcher=launcher,
                             only=args.only, rerun_stale=args.rerun_stale,
                             seeds=sweep.parse_seeds(args.seeds), command=args.command_line)
  print('\n' + sweep.summary(outcomes))
  print('\n' + report.render(args.workdir, 'text'))
  code = sweep.exit_code(outcomes.values())
  count = lambda state: sum(o.state == state for o in outcomes.values())
  if code == ExitCode.INTERRUPTED:
    print('error: the sweep was stopped; rerun the same command to resume it',
          file=sys.stderr)
  elif code == ExitCode.FAILED:
    print(f'error: {count("failed")} run(s) failed; see their train.log in '
          f'{args.workdir}/NAME/ (or NAME/seed_K/)',
          file=sys.stderr)
  if count('stale'):
    print(f'error: {count("stale")} run(s) stale: they ran under another config than '
          f'the sweep file gives them; rerun with --rerun-stale to train them again '
          f'(their directories are kept as NAME.stale-TIME)', file=sys.stderr)
  return code


def _sweep_dry_run(args) -> int:
  """`sweep --dry-run`: each run directory the sweep would train (--only and
  --seeds applied), what is there now and its batch on this machine's
  devices; nothing is written. Staleness is found by the sweep itself."""
  import jax
  from inception_jax import report, specs, sweep
  runs = sweep.select(sweep.load_sweep(args.sweep, sweep.parse_seeds(args.seeds)),
                      args.only)
  devices, rows = jax.device_count(), []
  for one in (r for run in runs for r in run.per_seed()):
    workdir = os.path.join(args.workdir, one.name)
    state = ('finished' if sweep.finished(workdir) else
             'started' if os.path.isdir(workdir) else 'new')
    spec = specs.RunSpec.from_config(one.build_config())
    rows.append([one.name, state] + _layout_row(spec, devices)[1:])
  print('\n'.join(report.aligned(['run', 'now'] + LAYOUT_HEADER[1:], rows,
                                  left=('run', 'now'))))
  print(f'\ndry run: nothing written; without --dry-run this trains {len(rows)} run '
        f'director{"y" if len(rows) == 1 else "ies"} in {args.workdir}')
  return 0


def cmd_search(args, overrides):
  from inception_jax import search
  if overrides:
    raise UserError('--config.* overrides do not apply to a search; put them in '
                    'the search file')
  if args.top is not None and args.confirm is None:
    raise UserError('--top M chooses the trials --confirm K retrains; give --confirm K')
  top = 2 if args.top is None else args.top
  if args.confirm is not None and (args.confirm < 1 or top < 1):
    raise UserError(f'--confirm takes a number of seeds >= 1 and --top a number of '
                    f'trials >= 1, got {args.confirm} and {top}')
  if args.dry_run:
    print('\n'.join(search.dry_run(args.search, args.workdir, args.trials)))
    return 0
  if args.launcher == 'slurm':
    launcher = search.SlurmTrials(args.workdir, train_job, parallel=args.parallel)
  else:
    launcher = search.LocalTrials(args.parallel)
  summary = search.run_search(args.search, args.workdir, launcher=launcher,
                              trials=args.trials, command=args.command_line)
  print('\n' + '\n'.join(summary.lines()))
  code = summary.exit_code()
  if code == ExitCode.INTERRUPTED:
    print('error: the search was stopped; rerun the same command to continue it',
          file=sys.stderr)
    return code
  if code == ExitCode.FAILED:
    print(f'error: no trial completed; see their train.log in {args.workdir}/trial_NNN/',
          file=sys.stderr)
    return code
  print(f'the trials, their curves and parameter importances: {_prog()} compare '
        f'{shlex.quote(args.workdir)} [--format html]')
  return _confirm(args, top) if args.confirm else 0


def _confirm(args, top: int) -> int:
  """`search --confirm K`: the best `top` trials and the base config over
  K seeds, as a sweep in DIR/confirm; its summary and comparison table."""
  from inception_jax import report, rundir, search, sweep
  directory = rundir.SearchDir(args.workdir).confirm
  launcher = (sweep.SlurmLauncher(directory, train_job) if args.launcher == 'slurm'
              else sweep.LocalLauncher(args.parallel))
  outcomes = search.confirm(args.workdir, args.confirm, top, launcher=launcher,
                            command=args.command_line)
  print('\n' + sweep.summary(outcomes))
  print('\n' + report.render(directory, 'text'))
  code = sweep.exit_code(outcomes.values())
  if code != ExitCode.OK:
    print(f'error: the confirmation did not finish ({sweep.summary(outcomes).splitlines()[-1]}); '
          f'rerun the same command to continue it', file=sys.stderr)
  return code


def cmd_sync(args, overrides):
  from inception_jax import tracking
  if overrides:
    raise UserError('sync takes no --config.* overrides')
  code = tracking.sync(args.workdir, dry_run=args.dry_run)
  if code:
    print(f'error: wandb sync exited with status {code} (its messages above); '
          f'rerun `sync` once it can reach the server', file=sys.stderr)
    return ExitCode.FAILED
  return 0


def cmd_compare(args, overrides):
  from inception_jax import report, search_report
  if overrides:
    raise UserError('compare takes no --config.* overrides')
  # A search directory (search.json): its trials, the pruning saved, Optuna's figures.
  chosen = search_report if search_report.is_search(args.workdir) else report
  print(chosen.render(args.workdir, args.format))
  return 0


def cmd_eval(args, overrides):
  from inception_jax import evaluate
  if overrides:
    raise UserError('eval takes no --config.* overrides: it evaluates runs as they were '
                    'trained (--exclude FILE sets the images left out)')
  exclude = '' if args.no_exclude else args.exclude
  result = evaluate.evaluate([args.workdir, *args.ensemble], crops=args.crops,
                             weights=args.weights, split=args.split, limit=args.limit,
                             exclude=exclude)
  if args.json:
    print(json.dumps(result))
  else:
    left_out = (f' ({result["excluded"]:,} left out by {result["exclude"]})'
                if result['exclude'] else '')
    print(f"top-1 error {result['top1_error']:.2f}%  top-5 error "
          f"{result['top5_error']:.2f}%  ({result['examples']:,} images{left_out} × "
          f"{result['crops']} crops, {len(result['members'])} run(s), "
          f"{result['weights']} weights)")
  return 0


def cmd_predict(args, overrides):
  from inception_jax import evaluate
  if overrides:
    raise UserError('predict takes no --config.* overrides')
  predictions = evaluate.predict(args.workdir, args.images, weights=args.weights,
                                 labels=args.labels)
  if args.json:
    print(json.dumps(predictions))
    return 0
  for p in predictions:
    print(p['image'])
    for name, probability in zip(p['classes'], p['probabilities']):
      print(f'  {probability:6.3f}  {name}')
  return 0


def cmd_prepare(args, overrides):
  from inception_jax.data import prepare
  if overrides:
    raise UserError('prepare takes no --config.* overrides')
  print(prepare.prepare(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir))
  return 0


# Training images of ImageNet-2012 (TFDS `imagenet2012`), for `layout`
# without the dataset at hand.
IMAGENET_TRAIN_IMAGES = 1_281_167


def cmd_layout(args, overrides):
  from inception_jax import config_lib
  try:
    devices = [int(d) for d in args.devices.split(',')]
  except ValueError:
    raise UserError(f'--devices takes comma-separated counts, got {args.devices!r}') from None
  if not devices or min(devices) < 1:
    raise UserError(f'--devices takes counts >= 1, got {args.devices!r}')
  print(layout_table(config_lib.load(args.config, overrides), devices))
  return 0


def layout_table(config, devices: list[int]) -> str:
  """How `config`'s batch runs on each device count (`parallel.resolve_batch`):
  batch, micro-batches, images per device, BatchNorm groups, learning rate,
  steps per epoch and in all."""
  from inception_jax import report, specs
  spec = specs.RunSpec.from_config(config)
  rows = [_layout_row(spec, count) for count in devices]
  return '\n'.join(report.aligned(LAYOUT_HEADER, rows, left=()))


LAYOUT_HEADER = ['devices', 'batch', 'micro-batches', 'per device', 'BN groups',
                 'learning rate', 'steps/epoch', 'steps']


def _layout_row(config, count: int) -> list[str]:
  """`config`'s batch on `count` devices: a row under LAYOUT_HEADER."""
  import math
  from inception_jax import optim, parallel
  data = config.data
  images = data.num_train if data.name == 'synthetic' else IMAGENET_TRAIN_IMAGES
  resolved = parallel.resolve_batch(config, count, quiet=True)
  layout = parallel.BatchLayout(resolved.batch_size, resolved.optim.grad_accum_steps,
                                count, resolved.model.bn_group_size)
  per_epoch = images / layout.batch
  steps = resolved.total_steps or math.ceil(resolved.num_epochs * per_epoch)
  return [str(count), str(layout.batch), str(layout.accum), str(layout.per_device),
          str(layout.groups), f'{optim.base_learning_rate(resolved.optim, layout.batch):.4g}',
          f'{per_epoch:,.1f}', f'{steps:,}']


def _cost_text(config, c) -> str:
  m = config.model
  lines = [
      f'stem {m.stem}, width ×{m.width_multiplier:g}, {c.num_classes} classes',
      f'image size     {c.image_size}×{c.image_size}',
      f'parameters     {c.params:,} ({c.trainable_params:,} trainable; the rest '
      f'are BatchNorm statistics)',
      f'multiply-adds  {c.macs:,} ({c.gmacs:.3f} G)',
  ]
  if m.aux_head:
    lines.append(f'aux head       +{c.aux_params:,} parameters, '
                 f'+{c.aux_macs:,} multiply-adds (training only)')
  return '\n'.join(lines)


def _cost_table(rows) -> str:
  from inception_jax import report
  header = ['run', 'image', 'params', 'G mult-adds', 'paper Bn ops']
  cells = []
  for run, _, c in rows:
    paper = run.paper.get('cost_bn_ops')
    cells.append([run.name, f'{c.image_size}', f'{c.params:,}', f'{c.gmacs:.3f}',
                  '' if paper is None else f'{paper:g}'])
  return '\n'.join(report.aligned(header, cells, left=('run',)))


# Tracing a network allocates millions of short-lived objects: at Python's
# default threshold (700) the collector walks the whole heap, every imported
# module's objects, again and again, about a fifth of a tiny training process
# (docs/results.md, "The test suite", has the counts).
GC_THRESHOLD = (10_000, 10, 10)


def collect_less_often() -> None:
  """Python's cyclic garbage collector at `GC_THRESHOLD`, for a process that
  traces JAX programs (the command line; the tests)."""
  gc.set_threshold(*GC_THRESHOLD)


def _configure_logging() -> None:
  """The application's log levels (a library call leaves them alone)."""
  logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.format(''), datefmt='%H:%M:%S')
  logging.getLogger('absl').setLevel(logging.WARNING)      # Orbax's INFO is a flood
  compat.quiet_backend_probe()       # "Unable to initialize backend 'tpu'" and the like
  # Without SLURM accounting (sacct), submitit warns at every poll.
  logging.getLogger('submitit').setLevel(logging.ERROR)
  # Orbax's background threads log a full disk with its traceback before the
  # run stops; the run's `error: no space left ...` line says it once.
  for name in ('absl', 'asyncio'):
    logging.getLogger(name).addFilter(_not_disk_full)
  _quiet_closed_loops()


LOG_FORMAT = '%(asctime)s %(levelname)s {}%(message)s'


def _name_log_lines(name: str) -> None:
  """Start each log line with [NAME]: the run's lines stay apart in a sweep's
  and SLURM's logs."""
  formatter = logging.Formatter(LOG_FORMAT.format(f"[{name.replace('%', '%%')}] "),
                                datefmt='%H:%M:%S')
  for handler in logging.getLogger().handlers:
    if compat.log_format(handler.formatter) == LOG_FORMAT.format(''):   # ours
      handler.setFormatter(formatter)


def _not_disk_full(record: logging.LogRecord) -> bool:
  return not (record.exc_info and rundir.is_disk_full(record.exc_info[1]))


def _quiet_closed_loops() -> None:
  """A save that fails part-way (a full disk) leaves TensorStore calling back
  into Orbax's closed event loop, each call an unraisable "Event loop is
  closed" traceback, by the thousand and meaning nothing: drop those."""
  previous = sys.unraisablehook
  if getattr(previous, 'quiet_closed_loops', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous(unraisable)
  hook.quiet_closed_loops = True
  sys.unraisablehook = hook


def train_job(args: list[str]) -> dict:
  """What a SLURM task runs: `train ARGS` in this process. The exit status
  comes back as data ({'exit_code': N}), so the sweep tells an interrupted
  run (4) from a failed one without reading exception text."""
  return {'exit_code': main(['train', *args])}


CONFIG_HELP = 'a shipped config by NAME (inception_v3) or a config FILE.py; [:ARG]'
SWEEP_HELP = 'a shipped sweep by NAME (table3_ablation) or a sweep FILE.py; [:ARG]'
SEARCH_HELP = 'a shipped search by NAME (lr_smoothing) or a search FILE.py; [:ARG]'


def _prog() -> str:
  """The command as the user typed it, for usage lines and sweep.json: the
  console script `inception-jax`, else `python -m inception_jax`."""
  script = os.path.basename(sys.argv[0]) if sys.argv else ''
  return 'inception-jax' if script.startswith('inception-jax') else 'python -m inception_jax'


def main(argv=None, prog: str | None = None) -> int:
  """Run one command; returns its exit status (documented above). `prog`
  names the command in usage lines (default: as it was started)."""
  from inception_jax import __version__
  argv = sys.argv[1:] if argv is None else list(argv)
  prog = prog or _prog()
  collect_less_often()       # before JAX loads
  _configure_logging()
  parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--version', action='version', version=f'inception_jax {__version__}')
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('train', help='train one config in a run directory')
  p.add_argument('--config', required=True, help=CONFIG_HELP)
  p.add_argument('--workdir', required=True, help='run directory')
  p.add_argument('--allow_config_change', action='store_true',
                 help='resume even if the config differs from the checkpointed one')
  p.add_argument('--from_step', type=int, metavar='N',
                 help='resume from the checkpoint of step N (later ones are moved to '
                      'checkpoints_discarded/, kept): e.g. before a divergence')
  p.add_argument('--search-trial', metavar='JOURNAL#N',
                 help="train trial N of the study in JOURNAL (what `search` starts): "
                      "report each evaluation's objective to it and stop when its "
                      "pruner says (exit 7)")
  p.add_argument('--dry-run', action='store_true',
                 help='print the config, the batch layout and the cost; write nothing')
  p.set_defaults(fn=cmd_train)
  p = sub.add_parser('cost', help='parameters and multiply-adds (Table 3 "Cost")')
  p.add_argument('--config', help=CONFIG_HELP)
  p.add_argument('--sweep', help=f'{SWEEP_HELP}: one row per run')
  p.add_argument('--json', action='store_true', help='print JSON')
  p.set_defaults(fn=cmd_cost)
  p = sub.add_parser('sweep', help='train every run of a sweep file')
  p.add_argument('sweep', help=SWEEP_HELP)
  p.add_argument('--workdir', required=True, help='sweep directory (a run per subdirectory)')
  p.add_argument('--launcher', choices=('local', 'slurm'), default='local')
  p.add_argument('--parallel', type=int, default=1,
                 help='local launcher: runs at a time')
  p.add_argument('--only', help='comma-separated run names (all their seeds)')
  p.add_argument('--seeds', metavar='N',
                 help="train every run with seeds 0 … N-1 (replaces the sweep file's)")
  p.add_argument('--rerun-stale', action='store_true',
                 help='move stale runs aside (NAME.stale-TIME) and train them again')
  p.add_argument('--dry-run', action='store_true',
                 help='list the run directories and their batch layout; write nothing')
  p.set_defaults(fn=cmd_sweep)
  p = sub.add_parser('search', help='an adaptive hyperparameter search (Optuna): weak '
                                    'trials stopped early, resumable')
  p.add_argument('search', help=SEARCH_HELP)
  p.add_argument('--workdir', required=True,
                 help='search directory (the study, a run directory per trial: trial_NNN)')
  p.add_argument('--trials', type=int, metavar='N',
                 help="trials in all, those of earlier invocations included (default: "
                      "the search file's)")
  p.add_argument('--parallel', type=int, default=1,
                 help='trials at a time (local: processes; slurm: jobs in the queue)')
  p.add_argument('--launcher', choices=('local', 'slurm'), default='local')
  p.add_argument('--confirm', type=int, metavar='K',
                 help='then train the base config and the best --top trials with seeds '
                      '0 … K-1 (a sweep in DIR/confirm) and print its table')
  p.add_argument('--top', type=int, metavar='M', help='trials --confirm retrains (default 2)')
  p.add_argument('--dry-run', action='store_true',
                 help='print the search and the study so far; write nothing')
  p.set_defaults(fn=cmd_search)
  p = sub.add_parser('sync', help="upload a sweep's (or a run's) offline wandb runs "
                                  "(wandb sync)")
  p.add_argument('workdir', help='sweep or run directory')
  p.add_argument('--dry-run', action='store_true',
                 help='list the runs and the wandb command, upload nothing')
  p.set_defaults(fn=cmd_sync)
  p = sub.add_parser('compare', help='the table of a sweep or search directory')
  p.add_argument('workdir', help='sweep or search directory')
  p.add_argument('--format', choices=('text', 'markdown', 'json', 'html'), default='text')
  p.set_defaults(fn=cmd_compare)
  p = sub.add_parser('eval', help="a run's (or an ensemble's) top-1/top-5, 1, 12 or 144 crops")
  p.add_argument('--workdir', required=True, help='run directory (its latest good checkpoint)')
  p.add_argument('--crops', type=int, choices=(1, 12, 144), default=1)
  p.add_argument('--ensemble', nargs='*', default=[], metavar='RUN',
                 help="more runs: the members' probabilities are averaged")
  p.add_argument('--weights', choices=('ema', 'raw'), default='ema')
  p.add_argument('--split', help="the split (default: the run's data.eval_split)")
  exclusion = p.add_mutually_exclusive_group()
  exclusion.add_argument('--exclude', metavar='FILE',
                         help="leave out the images this file names (the ILSVRC 2014 "
                              "blacklist: the paper's 48,238 images; default: the run's "
                              "data.eval_exclude)")
  exclusion.add_argument('--no-exclude', action='store_true',
                         help="every image of the split, whatever the run's data.eval_exclude")
  p.add_argument('--limit', type=int, help='the first N examples only')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.set_defaults(fn=cmd_eval)
  p = sub.add_parser('predict', help="top-5 classes for image files, from a run or "
                                     "imported weights")
  p.add_argument('--workdir', help='run directory (its latest good checkpoint)')
  p.add_argument('--weights', default='ema',
                 help="a run's 'ema' or 'raw' weights; without --workdir, imported ones: "
                      "tf_slim:CHECKPOINT, torchvision:FILE, keras[:FILE], or a file "
                      "(.pt/.pth torchvision, .h5/.keras Keras, else a TF-slim checkpoint)")
  p.add_argument('--labels', help='class names, one per line (default: the run\'s '
                                  'dataset, or numbers)')
  p.add_argument('--json', action='store_true', help='print JSON')
  p.add_argument('images', nargs='+', metavar='IMAGE')
  p.set_defaults(fn=cmd_predict)
  p = sub.add_parser('prepare', help='build a TFDS dataset (ImageNet from its tar files) '
                                     'in the format training reads (ArrayRecord)')
  p.add_argument('dataset', help="TFDS's name: imagenet2012")
  p.add_argument('--manual_dir', help='the downloaded files (ILSVRC2012_img_train.tar, '
                                      'ILSVRC2012_img_val.tar)')
  p.add_argument('--data_dir', help='where TFDS writes it (default ~/tensorflow_datasets); '
                                    'train with --config.data.data_dir=DIR')
  p.set_defaults(fn=cmd_prepare)
  p = sub.add_parser('layout', help='how the batch runs on each device count')
  p.add_argument('--config', required=True, help=CONFIG_HELP)
  p.add_argument('--devices', default='1,8,16,32,64', help='comma-separated device counts')
  p.set_defaults(fn=cmd_layout)
  try:
    overrides, rest = _split_overrides(argv)
    args = parser.parse_args(rest)
    args.command_line = ' '.join([prog, *map(shlex.quote, argv)])   # prog may hold spaces
    return args.fn(args, overrides)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:       # a third Ctrl-C while a run stops (stopping.py)
    print('error: aborted by Ctrl-C; the latest complete checkpoint is intact: rerun '
          'the same command to resume from it', file=sys.stderr)
    return ExitCode.INTERRUPTED
  except OSError as e:
    if not rundir.is_disk_full(e):
      raise
    full = rundir.DiskFull(e.filename or 'a file')
    print(f'error: {full}', file=sys.stderr)
    return full.exit_code

