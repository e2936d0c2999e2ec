"""Every use of a library's private or version-dependent API, in one place.

Each function here reaches past a library's public API where that API does not
do what the project needs; its docstring says what it reaches into, why, and
the versions it was written for. `USES` lists them, each with a `check()` that
verifies the library still has what the function relies on:
tests/test_compat.py runs every check, so an upgrade that moves or renames
something fails there with one line naming the function to update, not deep
in a run. A function that looks its attributes up through its `Use` fails at
run time with the same `Outdated` line; `wait_at_barrier` falls back instead.

One entry has no function here: `cost.jaxpr_macs` walks a jaxpr's
primitives and parameters itself, and its check guards what it reads.

This module sits at the bottom of the import layers: it imports no other
module of the package, and the libraries it reaches into only when called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import platform
import sys
import tempfile
import threading
import types
from typing import Any, Callable, Iterable, Sequence


NOT_INSTALLED = '(not installed)'


class Outdated(RuntimeError):
  """An installed library no longer has what a function here relies on."""


@dataclasses.dataclass(frozen=True)
class Use:
  """One reach into a library: `name` (a function here, or the code in
  module `where` that relies on it), the `library` as pip names it, the
  versions it was `written_for`, and a `probe` that looks for everything it
  relies on."""
  name: str
  library: str
  written_for: str
  probe: Callable[[Use], None]
  where: str = 'compat.py'        # the module that holds `name`

  def check(self) -> None:
    """Raise `Outdated` when the installed library no longer fits. An
    optional library that is not installed has nothing to break."""
    if installed_version(self.library) != NOT_INSTALLED:
      self.probe(self)

  def outdated(self, what: str) -> Outdated:
    return Outdated(f"{self.library} {installed_version(self.library)} no longer has "
                    f"{what}; {self.where}'s `{self.name}` was written for "
                    f"{self.written_for}: update it")

  def module(self, dotted: str) -> types.ModuleType:
    try:
      return importlib.import_module(dotted)
    except ImportError:
      raise self.outdated(f'the module {dotted}') from None

  def attr(self, obj: Any, name: str, owner: str | None = None) -> Any:
    try:
      return getattr(obj, name)
    except AttributeError:
      raise self.outdated(f'{owner or _name_of(obj)}.{name}') from None

  def params(self, func: Callable, names: Iterable[str], owner: str) -> None:
    """`func` (`owner`, for the message) accepts every keyword of `names`."""
    accepted = inspect.signature(func).parameters
    for name in names:
      if name not in accepted:
        raise self.outdated(f'the argument {name}= of {owner}')


def installed_version(library: str) -> str:
  if library == 'python':
    return platform.python_version()
  try:
    return importlib.metadata.version(library)
  except importlib.metadata.PackageNotFoundError:
    return NOT_INSTALLED


def _name_of(obj: Any) -> str:
  return getattr(obj, '__qualname__', None) or getattr(obj, '__name__', None) or type(
      obj).__qualname__


def _use(name: str) -> Use:
  return next(u for u in USES if u.name == name)


# --- Orbax ---------------------------------------------------------------------

_ORBAX_REGISTRY = 'orbax.checkpoint._src.serialization.type_handler_registry'
_ORBAX_METADATA = 'orbax.checkpoint._src.metadata.array_metadata_store'


def save_replicated_arrays_whole() -> None:
  """Register Orbax's ArrayHandler for `jax.Array` with
  `use_replica_parallel=False`: Orbax splits a replicated array among its
  replicas so that each writes a part (faster on TPU hosts); on a CPU the
  "devices" share one memory and the split only costs a compiled slice per
  array and device.

  Reaches into orbax.checkpoint._src: the handler needs the array metadata
  store that Orbax's default handler has (`array_metadata_store.Store`, not
  exported), and the registry's `add(ignore_warnings=True)` replaces the
  default without a warning (the public `register_type_handler` cannot pass
  it). Written for orbax-checkpoint 0.12.8; an Orbax whose `add` has no
  `ignore_warnings` gets the public call."""
  use = _use('save_replicated_arrays_whole')
  import jax
  import orbax.checkpoint as ocp
  registry = use.attr(use.module(_ORBAX_REGISTRY), 'GLOBAL_TYPE_HANDLER_REGISTRY')
  store = use.attr(use.module(_ORBAX_METADATA), 'Store')
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                           array_metadata_store=store())
  if 'ignore_warnings' in inspect.signature(registry.add).parameters:
    registry.add(jax.Array, handler, override=True, ignore_warnings=True)
  else:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _probe_save_replicated_arrays_whole(use: Use) -> None:
  import orbax.checkpoint as ocp
  registry = use.attr(use.module(_ORBAX_REGISTRY), 'GLOBAL_TYPE_HANDLER_REGISTRY')
  use.params(use.attr(registry, 'add'), ['override'], 'GLOBAL_TYPE_HANDLER_REGISTRY.add')
  use.attr(use.module(_ORBAX_METADATA), 'Store')
  handlers = use.attr(ocp, 'type_handlers', 'orbax.checkpoint')
  use.params(use.attr(handlers, 'ArrayHandler', 'orbax.checkpoint.type_handlers'),
             ['use_replica_parallel', 'array_metadata_store'], 'ArrayHandler')


def await_orbax_cleanup(manager) -> None:
  """Wait for the removal of unfinished checkpoints that an Orbax
  CheckpointManager starts in the background when it opens
  (`cleanup_tmp_directories=True`): its `close()` leaves it running, and a
  process that exits meanwhile prints the thread's traceback. No public call
  waits for it. Written for orbax-checkpoint 0.12.8
  (`CheckpointManager._maybe_await_cleanup_tmp_directory`)."""
  use = _use('await_orbax_cleanup')
  use.attr(manager, '_maybe_await_cleanup_tmp_directory', 'CheckpointManager')()


def _probe_await_orbax_cleanup(use: Use) -> None:
  import orbax.checkpoint as ocp
  use.attr(ocp.CheckpointManager, '_maybe_await_cleanup_tmp_directory')


# --- JAX -----------------------------------------------------------------------


def wait_at_barrier(key: str, timeout_seconds: int) -> bool:
  """Wait at barrier `key` of the coordination service that
  `jax.distributed.initialize` started; False (nothing waited for) when there
  is no such client, and the caller synchronises another way.

  JAX has no public barrier outside a device collective
  (`multihost_utils.sync_global_devices`), which a process still compiling
  for minutes would not survive. Reaches into `jax._src.distributed`'s
  `global_state.client` (a DistributedRuntimeClient), as JAX's own
  multi-process tests do. Written for jax 0.10.2."""
  try:
    from jax._src import distributed
    client = distributed.global_state.client
  except (ImportError, AttributeError):
    return False
  if client is None:
    return False
  client.wait_at_barrier(key, timeout_in_ms=timeout_seconds * 1000)
  return True


def _probe_wait_at_barrier(use: Use) -> None:
  distributed = use.module('jax._src.distributed')
  state = use.attr(distributed, 'global_state', 'jax._src.distributed')
  use.attr(state, 'client', 'jax._src.distributed.global_state')
  runtime = use.attr(distributed, '_jax', 'jax._src.distributed')
  client = use.attr(runtime, 'DistributedRuntimeClient', 'jaxlib._jax')
  barrier = use.attr(client, 'wait_at_barrier', 'DistributedRuntimeClient')
  if 'timeout_in_ms' not in (barrier.__doc__ or ''):
    raise use.outdated('the argument timeout_in_ms= of '
                       'DistributedRuntimeClient.wait_at_barrier')


_JAX_BACKEND_LOGGER = 'jax._src.xla_bridge'


def quiet_backend_probe() -> None:
  """Silence JAX's INFO lines while it probes for accelerators ("Unable to
  initialize backend 'tpu'" and the like: not a problem). They come from the
  logger of the private module jax._src.xla_bridge, which is named only by
  its module path. Written for jax 0.10.2."""
  logging.getLogger(_JAX_BACKEND_LOGGER).setLevel(logging.WARNING)


def _probe_quiet_backend_probe(use: Use) -> None:
  logger = use.attr(use.module(_JAX_BACKEND_LOGGER), 'logger', _JAX_BACKEND_LOGGER)
  if getattr(logger, 'name', None) != _JAX_BACKEND_LOGGER:
    raise use.outdated(f'a logger named {_JAX_BACKEND_LOGGER}')


def cost_analysis(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled program (`jax.stages.Compiled`) as one
  dict (`'flops'`, `'bytes accessed'`, …; empty where the backend gives
  none). Older JAX returned a list with one dict per program, 0.10 returns
  the dict; its docs do not promise either form, so both are read here (the
  GPU suite's JAX 0.11 included). Written for jax 0.10.2 (a dict)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def _probe_cost_analysis(use: Use) -> None:
  import jax
  import jax.numpy as jnp
  compiled = jax.jit(lambda a: a @ a).lower(jnp.zeros((8, 8))).compile()
  use.attr(compiled, 'cost_analysis', 'jax.stages.Compiled')
  if not cost_analysis(compiled).get('flops'):
    raise use.outdated("Compiled.cost_analysis() with a 'flops' count")


def _probe_jaxpr_fields(use: Use) -> None:
  """`cost.jaxpr_macs` reads convolutions and matrix products off a jaxpr:
  the primitives' names and their parameters (dimension numbers, strides,
  padding) are JAX's internal representation, not a stable API."""
  import jax
  import jax.numpy as jnp
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  jaxpr = jax.make_jaxpr(conv)(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 5))).jaxpr
  eqns = {e.primitive.name: e for e in jaxpr.eqns}
  if 'conv_general_dilated' not in eqns:
    raise use.outdated('the jaxpr primitive conv_general_dilated')
  for field in ('dimension_numbers', 'window_strides', 'padding'):
    if field not in eqns['conv_general_dilated'].params:
      raise use.outdated(f'the parameter {field} of conv_general_dilated')
  for spec in ('lhs_spec', 'rhs_spec', 'out_spec'):
    use.attr(eqns['conv_general_dilated'].params['dimension_numbers'], spec,
             'ConvDimensionNumbers')
  jaxpr = jax.make_jaxpr(jnp.dot)(jnp.zeros((2, 3)), jnp.zeros((3, 4))).jaxpr
  dot = next((e for e in jaxpr.eqns if e.primitive.name == 'dot_general'), None)
  if dot is None or 'dimension_numbers' not in dot.params:
    raise use.outdated('the jaxpr primitive dot_general with its dimension_numbers')


# --- tensorboardX --------------------------------------------------------------

_EVENT_THREAD = '_EventLoggerThread'


def import_tensorboardx() -> types.ModuleType:
  """tensorboardX, imported without PyTorch when PyTorch is not loaded yet:
  tensorboardX imports it only to accept torch tensors, which we never log,
  and the import takes seconds. `None` in `sys.modules` makes that import
  fail, which tensorboardX 2.6 catches."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    import tensorboardX
    return tensorboardX
  sys.modules['torch'] = None
  try:
    import tensorboardX
  finally:
    del sys.modules['torch']
  return tensorboardX


class EventWriter:
  """The thread, queue and closed flag of a tensorboardX `EventFileWriter`
  (`SummaryWriter.all_writers[...].event_writer`). A write to it waits on a
  bounded queue that a thread drains; tensorboardX says nothing when that
  thread dies (a full disk), after which a write blocks for good and its
  exit handler fails again. Seeing the thread, bounding the wait and marking
  the writer closed need its private `_event_queue`, `_worker` and `_closed`.
  Written for tensorboardX 2.6.5."""

  def __init__(self, events):
    self.events = events
    self.use = _use('EventWriter')

  @property
  def queue(self):
    """The queue of events waiting for the thread (`.put` is what a write calls)."""
    return self.use.attr(self.events, '_event_queue', 'EventFileWriter')

  def thread_alive(self) -> bool:
    return self.use.attr(self.events, '_worker', 'EventFileWriter').is_alive()

  @property
  def closed(self) -> bool:
    return self.use.attr(self.events, '_closed', 'EventFileWriter')

  def mark_closed(self) -> None:
    """Closed for tensorboardX: its close (and exit handler) then do nothing."""
    self.events._closed = True

  def stop_thread(self) -> None:
    self.use.attr(self.events, '_worker', 'EventFileWriter').stop()

  @staticmethod
  def is_thread(thread: threading.Thread) -> bool:
    """Whether `thread` is an event writer's thread (tensorboardX's private
    `_EventLoggerThread`), e.g. in `threading.excepthook`."""
    return type(thread).__name__ == _EVENT_THREAD


def _probe_event_writer(use: Use) -> None:
  import_tensorboardx()
  module = use.module('tensorboardX.event_file_writer')
  use.attr(module, _EVENT_THREAD, 'tensorboardX.event_file_writer')
  with tempfile.TemporaryDirectory() as directory:
    events = module.EventFileWriter(directory)
    try:
      writer = EventWriter(events)
      if writer.closed is not False or not writer.thread_alive():
        raise use.outdated('EventFileWriter._closed (False) and a live ._worker')
      if not EventWriter.is_thread(events._worker):
        raise use.outdated(f'a writer thread of the class {_EVENT_THREAD}')
      use.attr(writer.queue, 'put', 'EventFileWriter._event_queue')
      use.attr(events._worker, 'stop', 'EventFileWriter._worker')
    finally:
      events.close()
    if events._closed is not True:
      raise use.outdated('EventFileWriter._closed (True once closed)')


def hparams_summaries(hparams: dict, metrics: dict) -> list:
  """TensorBoard's HParams summaries for `hparams` and `metrics`: the
  experiment, the session start, the session end. tensorboardX's
  `summary.hparams` builds them (its `SummaryWriter.add_hparams` would write
  them into a new run folder of their own). Written for tensorboardX 2.6.5."""
  import_tensorboardx()
  from tensorboardX.summary import hparams as summaries
  return list(summaries(hparams, metrics))


def _probe_hparams_summaries(use: Use) -> None:
  import_tensorboardx()
  summary = use.module('tensorboardX.summary')
  use.params(use.attr(summary, 'hparams', 'tensorboardX.summary'),
             ['hparam_dict', 'metric_dict'], 'tensorboardX.summary.hparams')
  if len(hparams_summaries({'a': 1}, {'m': None})) != 3:
    raise use.outdated('summary.hparams returning (experiment, start, end)')


def write_events(path: str, summaries: Sequence, wall_time: float) -> None:
  """An event file at `path` holding `summaries` (after the file-version
  event TensorBoard reads first), written at once. tensorboardX writes event
  files only through a SummaryWriter, which names the file itself and writes
  from a thread; its `RecordWriter` and `Event` proto write one file whole.
  Written for tensorboardX 2.6.5."""
  import_tensorboardx()
  from tensorboardX.proto.event_pb2 import Event
  from tensorboardX.record_writer import RecordWriter
  writer = RecordWriter(path)
  writer.write(Event(wall_time=wall_time, file_version='brain.Event:2').SerializeToString())
  for summary in summaries:
    writer.write(Event(wall_time=wall_time, summary=summary).SerializeToString())
  writer.flush()
  writer.close()


def _probe_write_events(use: Use) -> None:
  import_tensorboardx()
  use.attr(use.module('tensorboardX.proto.event_pb2'), 'Event', 'tensorboardX.proto.event_pb2')
  writer = use.attr(use.module('tensorboardX.record_writer'), 'RecordWriter',
                    'tensorboardX.record_writer')
  for method in ('write', 'flush', 'close'):
    use.attr(writer, method)


def mark_hparams_differing(experiment_summary, keys: set[str]) -> None:
  """Set HParamInfo.differs on `keys` in an experiment summary from
  `hparams_summaries` (TensorBoard lists differing keys first).
  tensorboardX's copy of the HParams protos predates the field, so the
  content is rewritten with TensorBoard's own (the same wire format).
  Written for tensorboardX 2.6.5 and tensorboard 2.21."""
  if not keys:
    return
  from tensorboard.plugins.hparams import plugin_data_pb2
  content = experiment_summary.value[0].metadata.plugin_data
  data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
  for info in data.experiment.hparam_infos:
    info.differs = info.name in keys
  content.content = data.SerializeToString()


def _probe_mark_hparams_differing(use: Use) -> None:
  protos = use.module('tensorboard.plugins.hparams.plugin_data_pb2')
  plugin_data = use.attr(protos, 'HParamsPluginData', 'plugin_data_pb2')
  info = plugin_data().experiment.hparam_infos.add()
  if 'differs' not in type(info).DESCRIPTOR.fields_by_name:
    raise use.outdated('HParamInfo.differs')
  experiment = hparams_summaries({'a': 1, 'b': 2}, {'m': None})[0]
  mark_hparams_differing(experiment, {'a'})
  data = plugin_data.FromString(experiment.value[0].metadata.plugin_data.content)
  if {i.name: i.differs for i in data.experiment.hparam_infos} != {'a': True, 'b': False}:
    raise use.outdated("an experiment summary whose plugin data is TensorBoard's "
                       'HParamsPluginData')


# --- TensorFlow Datasets -------------------------------------------------------

_TFDS_CONVERTER = 'tensorflow_datasets.scripts.cli.convert_format_utils'


def convert_to_array_record(version_dir: str, num_workers: int) -> None:
  """ArrayRecord files beside the TFRecord files of a prepared TFDS dataset
  (`version_dir`), recorded in its dataset_info.json as an alternative
  format. TFDS's converter lives in its command line's module
  (scripts/cli/convert_format_utils, no public API), which subclasses
  `beam.DoFn` at import: a stand-in that is never used lets it import
  without Apache Beam (the conversion runs with `use_beam=False`). Written
  for tensorflow-datasets 4.9.10."""
  use = _use('convert_to_array_record')
  with _beam_stand_in():
    converter = use.module(_TFDS_CONVERTER)
  use.attr(converter, 'convert_dataset', _TFDS_CONVERTER)(
      out_dir=None, out_file_format='array_record', dataset_version_dir=version_dir,
      use_beam=False, num_workers=num_workers)


def _probe_convert_to_array_record(use: Use) -> None:
  with _beam_stand_in():
    converter = use.module(_TFDS_CONVERTER)
  use.params(use.attr(converter, 'convert_dataset', _TFDS_CONVERTER),
             ['out_dir', 'out_file_format', 'dataset_version_dir', 'use_beam',
              'num_workers'], 'convert_format_utils.convert_dataset')


@contextlib.contextmanager
def _beam_stand_in():
  try:
    import apache_beam  # noqa: F401
    yield
    return
  except ImportError:
    pass
  stand_in = types.ModuleType('apache_beam')
  stand_in.DoFn = object
  sys.modules['apache_beam'] = stand_in
  try:
    yield
  finally:
    sys.modules.pop('apache_beam', None)


# --- Optuna ----------------------------------------------------------------------


def attach_trial(study, trial_id: int):
  """An `optuna.trial.Trial` for a trial that another process created (the
  search driver's `study.ask()`), so that the trainer reports to it and asks
  its pruner: Optuna's documented constructor `Trial(study, trial_id)`, which
  its docs advise against calling directly (it is made for `study.optimize`
  and `study.ask`). Written for optuna 5.0.0 (and 4.2 on)."""
  use = _use('attach_trial')
  trial = use.attr(use.module('optuna.trial'), 'Trial')
  return trial(study=study, trial_id=trial_id)


def _probe_attach_trial(use: Use) -> None:
  trial = use.attr(use.module('optuna.trial'), 'Trial')
  use.params(trial, ('study', 'trial_id'), 'optuna.trial.Trial')
  for name in ('report', 'should_prune', 'set_user_attr'):
    use.attr(trial, name)


# --- Python's logging ----------------------------------------------------------


def log_format(formatter: logging.Formatter | None) -> str | None:
  """The format string a logging Formatter was made with (`_fmt`; no public
  accessor): how the CLI recognises the handler it configured. Written for
  Python 3.11 and 3.12."""
  return getattr(formatter, '_fmt', None)


def _probe_log_format(use: Use) -> None:
  if log_format(logging.Formatter('%(message)s!')) != '%(message)s!':
    raise use.outdated('logging.Formatter._fmt')


USES: list[Use] = [
    Use('save_replicated_arrays_whole', 'orbax-checkpoint', '0.12.8 (0.12.x)',
        _probe_save_replicated_arrays_whole),
    Use('await_orbax_cleanup', 'orbax-checkpoint', '0.12.8 (0.12.x)',
        _probe_await_orbax_cleanup),
    Use('wait_at_barrier', 'jax', '0.10.2', _probe_wait_at_barrier),
    Use('quiet_backend_probe', 'jax', '0.10.2', _probe_quiet_backend_probe),
    Use('jaxpr_macs', 'jax', '0.10.2', _probe_jaxpr_fields, where='cost.py'),
    Use('cost_analysis', 'jax', '0.10.2 (a dict; older: a list)', _probe_cost_analysis),
    Use('EventWriter', 'tensorboardX', '2.6.5', _probe_event_writer),
    Use('hparams_summaries', 'tensorboardX', '2.6.5', _probe_hparams_summaries),
    Use('write_events', 'tensorboardX', '2.6.5', _probe_write_events),
    Use('mark_hparams_differing', 'tensorboard', '2.21.0',
        _probe_mark_hparams_differing),
    Use('convert_to_array_record', 'tensorflow-datasets', '4.9.10',
        _probe_convert_to_array_record),
    Use('log_format', 'python', '3.11 and 3.12', _probe_log_format),
    Use('attach_trial', 'optuna', '5.0.0 (4.2 on)', _probe_attach_trial),
]
