"""Devices: multi-host start-up, the ('data',) mesh and its shardings.

One process per host (or per GPU) joins through `jax.distributed.initialize()`,
which reads SLURM, Open MPI, Kubernetes or TPU-pod environments by itself, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID when set by hand.
Parameters are replicated; each batch is split along the 'data' axis.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from inception_jax import compat
from inception_jax.errors import ConfigError

log = logging.getLogger(__name__)

_MULTI_PROCESS_ENV = {
    'JAX_COORDINATOR_ADDRESS': None,
    'SLURM_NTASKS': '1',
    'OMPI_COMM_WORLD_SIZE': '1',
}


def launched_with_several_processes() -> bool:
  """True when the environment says this is one of several processes."""
  for key, single in _MULTI_PROCESS_ENV.items():
    value = os.environ.get(key)
    if value and (single is None or value != single):
      return True
  return False


def initialize() -> None:
  """Join the other processes of a multi-process run (no-op otherwise).
  Must run before anything touches a device."""
  if not launched_with_several_processes() or jax.distributed.is_initialized():
    return
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()    # SLURM, Open MPI, Kubernetes, TPU pods


_barriers = 0


def barrier(name: str, timeout_seconds: int = 3600) -> None:
  """Wait until every process has arrived here (no-op for one process).

  A barrier of the coordination service that `jax.distributed` started, not
  a device collective: one process may take minutes longer to compile than
  another, which a first collective would not survive (Gloo, JAX's CPU
  collectives, gives up after about 30 s)."""
  global _barriers
  if jax.process_count() == 1:
    return
  _barriers += 1
  key = f'inception_jax/{name}/{_barriers}'
  if not compat.wait_at_barrier(key, timeout_seconds):
    from jax.experimental import multihost_utils   # no client: a device collective
    multihost_utils.sync_global_devices(key)


def compiled_together(jitted, *args, **kwargs):
  """`jitted` compiled for these arguments, returned once every process has
  compiled it (`barrier`): their first collective then starts together."""
  compiled = jitted.lower(*args, **kwargs).compile()
  barrier('compiled')
  return compiled


def compilation_cache_dir() -> str:
  """Where compiled programs are kept between processes: JAX's own setting
  (JAX_COMPILATION_CACHE_DIR; empty turns the cache off), else
  $XDG_CACHE_HOME/inception_jax/xla. The runs of a sweep — its seeds above
  all — then compile each distinct program once, and a resumed run starts in
  seconds."""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'inception_jax', 'xla')


def use_compilation_cache() -> None:
  """Turn on JAX's persistent compilation cache (`compilation_cache_dir`)."""
  if not jax.config.jax_compilation_cache_dir:
    path = compilation_cache_dir()
    if path:
      jax.config.update('jax_compilation_cache_dir', path)


def data_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis. Auto axis types: XLA propagates the
  shardings (a reshape of the batch, as ghost BatchNorm does, needs no
  annotation)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def micro_sharded(mesh) -> NamedSharding:
  """A (micro-batches, rows, …) batch: every micro-batch spread over all devices."""
  return NamedSharding(mesh, P(None, 'data'))


# --- The batch: effective size, gradient accumulation, BatchNorm groups -------

@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How one optimizer step's `batch` examples are computed: `accum`
  micro-batches one after another (gradient accumulation), each split over
  `devices`. Micro-batch j holds the batch's rows j·micro … (j+1)·micro − 1,
  so BatchNorm groups (consecutive rows) are the same for any `accum`."""
  batch: int
  accum: int
  devices: int
  group: int = 0          # BatchNorm group size (0: the whole micro-batch)

  @property
  def micro(self) -> int:
    return self.batch // self.accum

  @property
  def per_device(self) -> int:
    """Examples a device holds in one forward/backward pass."""
    return self.micro // self.devices

  @property
  def groups(self) -> int:
    """BatchNorm groups per optimizer step (the paper: 50 replicas)."""
    return self.batch // self.group if self.group else self.accum


def batch_layout(batch: int, devices: int, *, accum: int = 1, per_device_batch: int = 0,
                 group: int = 0, fit: bool = False) -> BatchLayout:
  """The layout of `batch` on `devices` (`config.batch_size`,
  `optim.grad_accum_steps`, `per_device_batch`, `model.bn_group_size`,
  `fit_batch`).

  `accum` ≥ 1 is taken as given. `accum=0` picks the fewest micro-batches
  whose share per device is at most `per_device_batch` and a whole number of
  BatchNorm groups, so that no group spans two devices. `fit=True` first
  moves `batch` to the nearest size that allows this (each device holding
  the same whole number of groups); otherwise a batch that does not is an
  error naming the nearest sizes that do.
  """
  if accum < 0 or per_device_batch < 0 or group < 0:
    raise ConfigError('optim.grad_accum_steps, per_device_batch and '
                      'model.bn_group_size must be >= 0')
  if accum == 0:
    if per_device_batch <= 0:
      raise ConfigError('optim.grad_accum_steps=0 (choose it) needs per_device_batch > 0')
    unit = max(group, 1)
    if per_device_batch < unit:
      raise ConfigError(f'per_device_batch {per_device_batch} is smaller than one '
                        f'BatchNorm group ({group} examples)')
    if fit:
      batch = _nearest_batch(batch, devices * unit)
    for k in range(1, batch + 1):
      if batch % (k * devices) == 0:
        share = batch // (k * devices)
        if share <= per_device_batch and share % unit == 0:
          return BatchLayout(batch, k, devices, group)
    sizes = sorted({_nearest_batch(batch, devices * unit, below) for below in (True, False)})
    raise ConfigError(
        f'batch_size {batch} cannot be split into {devices} equal shares of whole '
        f'BatchNorm groups of {unit}: use {" or ".join(map(str, sizes))} (or '
        f'fit_batch=True, which picks the nearest)')
  if batch % accum:
    raise ConfigError(f'batch_size {batch} is not a multiple of '
                      f'optim.grad_accum_steps {accum}')
  layout = BatchLayout(batch, accum, devices, group)
  if layout.micro % devices:
    raise ConfigError(f'the micro-batch of {layout.micro} (batch_size {batch} / '
                      f'grad_accum_steps {accum}) must be a multiple of the '
                      f'{devices} devices')
  if group and group < layout.micro and layout.micro % group:
    raise ConfigError(f'the micro-batch of {layout.micro} is not a multiple of '
                      f'model.bn_group_size {group}')
  return layout


def resolve_batch(config, devices: int, quiet: bool = False):
  """A copy of `config` (a `specs.RunSpec`) with the batch as this device
  count runs it (`batch_layout`): `batch_size` (moved to the nearest size that splits into
  whole BatchNorm groups when `fit_batch`) and `optim.grad_accum_steps`
  (chosen when 0). Checkpoints and result.json record these values;
  config.json the config as given."""
  layout = batch_layout(
      config.batch_size, devices, accum=config.optim.grad_accum_steps,
      per_device_batch=config.per_device_batch, group=config.model.bn_group_size,
      fit=config.fit_batch)
  if layout.batch != config.batch_size and not quiet:
    log.warning('batch_size %d → %d: the nearest size that %d devices split into '
                'equal shares of whole BatchNorm groups of %d (fit_batch=True)',
                config.batch_size, layout.batch, devices, layout.group)
  config = config.with_batch(layout.batch, layout.accum)
  if layout.accum > 1 and not quiet:
    log.info('batch %d = %d micro-batches of %d (%d per device), %d BatchNorm '
             'groups per step', layout.batch, layout.accum, layout.micro,
             layout.per_device, layout.groups)
  return config


def _nearest_batch(batch: int, unit: int, below: bool | None = None) -> int:
  """The multiple of `unit` nearest `batch` (the smaller on a tie), or the
  nearest at most / at least it."""
  lower = max(batch // unit, 1) * unit
  upper = lower if lower >= batch else lower + unit
  if below is None:
    return lower if batch - lower <= upper - batch else upper
  return lower if below else upper
