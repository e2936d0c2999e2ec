"""Devices: multi-host start-up, the ('data',) mesh and its shardings.

One process per host (or per GPU) joins through `jax.distributed.initialize()`,
which reads SLURM, Open MPI, Kubernetes or TPU-pod environments by itself, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID when set by hand.
Parameters are replicated; each batch is split along the 'data' axis.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

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
