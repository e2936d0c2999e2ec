"""The Grain input pipeline: shuffle per epoch, each process's rows of every
batch, preprocess, batch, prefetch — deterministic and resumable to the
exact batch. Images travel as uint8 pixels and become the network's [-1, 1]
input on the device (`network_input`); after colour distortion, as float32
already in [-1, 1].

Training stream: the whole split, shuffled anew each epoch from the seed,
repeated without end; example i of epoch e is augmented with a generator
seeded by (seed, e, i), so any batch is a pure function of the seed and its
position. Global batch b is positions b·B … (b+1)·B − 1 of that stream, and
process p of P reads its rows p·B/P … (p+1)·B/P − 1: the global batches are
the same whatever the number of processes (one process × 8 devices trains
as two × 4 do). The iterator's state (`get_state`/`set_state`) is the
position. Corrupt images (`data.skip_corrupt`) are dropped in the consuming
process, after Grain's worker processes (each process then fills its rows
from its own next positions); a split none of whose images decodes is an
error.

Evaluation visits every example of the split exactly once: the process
shards are padded to the same number of full batches, and a `mask` marks
the real examples.

Functions that take `data` take the run's data section, a `specs.DataSpec`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax.data import preprocess
from inception_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def options(data) -> preprocess.Options:
  return preprocess.Options(
      image_size=data.image_size,
      crop_sampler=data.crop_sampler,
      crop_area=(data.crop_area_min, 1.0),
      crop_attempts=data.crop_attempts,
      min_object_covered=data.min_object_covered,
      color_distort=data.color_distort,
      eval_central_fraction=data.eval_central_fraction)


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  process_count = process_count or jax.process_count()
  if global_batch % process_count:
    raise ConfigError(f'batch_size {global_batch} is not divisible by the '
                      f'{process_count} processes')
  return global_batch // process_count


class SkipCounter:
  """Corrupt images skipped (`data.skip_corrupt`) by the datasets given it;
  each one is logged. Training skips are counted in this process; evaluation
  skips made in Grain's worker processes (`data.num_workers` > 0) count in
  the worker's own copy."""

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def note(self, error: Exception | str) -> None:
    with self._lock:
      self.count += 1
      count = self.count
    log.warning('skipped corrupt image (%d so far): %s', count, error)

  def __getstate__(self):                 # picklable for Grain's workers
    return {'count': self.count}

  def __setstate__(self, state):
    self.count = state['count']
    self._lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class _Skipped:
  """A training example whose image could not be decoded: passed on (not
  dropped where it was read) so that the consuming process sees every skip."""
  index: int
  error: str


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """position in the stream, example index → preprocessed example (or _Skipped)."""
  source: Any
  opts: preprocess.Options
  seed: int
  epoch_length: int
  skip_corrupt: bool

  def __call__(self, position: int, index: int):
    epoch = position // self.epoch_length
    rng = np.random.default_rng([self.seed, epoch, int(index)])
    try:
      record = self.source[int(index)]
      image = preprocess.train_image(record['image'], rng, self.opts, record['where'],
                                     scale=False)
    except preprocess.CorruptImageError as e:
      if not self.skip_corrupt:
        raise
      return _Skipped(int(index), str(e))
    return {'image': image, 'label': np.int32(record['label']),
            'index': np.int32(index)}


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """padded position → preprocessed example with mask 1, or padding with 0."""
  source: Any
  opts: preprocess.Options
  indices: range
  skip_corrupt: bool
  skipped: SkipCounter = dataclasses.field(compare=False)

  def __call__(self, position: int):
    size = self.opts.image_size
    if position < len(self.indices):
      try:
        record = self.source[self.indices[position]]
        image = preprocess.eval_image(record['image'], self.opts, record['where'],
                                      scale=False)
        return {'image': image, 'label': np.int32(record['label']),
                'index': np.int32(self.indices[position]), 'mask': np.float32(1)}
      except preprocess.CorruptImageError as e:
        if not self.skip_corrupt:
          raise
        self.skipped.note(e)
    return {'image': np.zeros((size, size, 3), np.uint8),
            'label': np.int32(0), 'index': np.int32(-1), 'mask': np.float32(0)}


class _ProcessRows(grain.MapDataset):
  """Process `index` of `count`'s share of a stream cut into global
  (micro-)batches of `rows · count`: rows index·rows … (index+1)·rows − 1 of
  each."""

  def __init__(self, parent: grain.MapDataset, *, rows: int, index: int, count: int):
    super().__init__(parent)
    self.rows, self.index, self.count = rows, index, count

  def __len__(self) -> int:
    return len(self.parents[0]) // self.count

  def __getitem__(self, position):
    if isinstance(position, slice):
      return self.slice(position)
    batch, row = divmod(position, self.rows)
    return self.parents[0][(batch * self.count + self.index) * self.rows + row]

  def __str__(self) -> str:
    return f'ProcessRows(rows={self.rows}, index={self.index}, count={self.count})'


class _DropSkipped:
  """A filter: drops skipped examples, counting them. Once every image of the
  split has failed there is nothing to train on, and the stream stops with an
  error rather than searching the endless repetition for a good image."""

  def __init__(self, source, split_size: int, skipped: SkipCounter):
    self.where, self.split_size, self.skipped = _where(source), split_size, skipped
    self._failed: set[int] = set()

  def __call__(self, example) -> bool:
    if not isinstance(example, _Skipped):
      return True
    self.skipped.note(example.error)
    self._failed.add(example.index)
    if len(self._failed) == self.split_size:
      raise UserError(
          f'every training image in {self.where} failed to decode (all '
          f'{self.split_size} skipped, as logged above); nothing to train on: check '
          f'data.name and data.path')
    return False


def _where(source) -> str:
  return getattr(source, 'where', None) or repr(source)


def _ignore_stop_signals(worker_index: int, worker_count: int) -> None:
  """In a Grain worker process: leave SIGINT, SIGTERM and SIGUSR2 to the
  trainer, which saves and stops its workers (a Ctrl-C reaches the whole
  process group, SLURM signals every process of a job)."""
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
    signal.signal(sig, signal.SIG_IGN)


def _read_options(data) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=data.num_threads,
                           prefetch_buffer_size=data.prefetch)


def _prefetch(ds: grain.IterDataset, data) -> grain.IterDataset:
  if data.num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():    # Grain's workers read absl flags
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers),
                        worker_init_fn=_ignore_stop_signals)
  return ds


def train_dataset(source, data, *, seed: int, local_batch: int,
                  micro_batches: int = 1,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  skipped: SkipCounter | None = None) -> grain.IterDataset:
  """This process's endless stream of training batches ({'image', 'label',
  'index'}); corrupt images it skips are counted in `skipped`. With
  `micro_batches` > 1 (gradient accumulation) each process holds its share
  of every micro-batch, so micro-batches too are the same for any number
  of processes."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if len(source) < local_batch * count:
    raise ConfigError(f'the training split has {len(source)} examples, fewer than '
                      f'one batch ({local_batch * count})')
  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
  ds = ds.map_with_index(_TrainExample(source, options(data), seed, len(source),
                                       data.skip_corrupt))
  if count > 1:
    ds = _ProcessRows(ds, rows=local_batch // micro_batches, index=index, count=count)
  ds = _prefetch(ds.to_iter_dataset(_read_options(data)), data)
  # Workers prepare examples round-robin; skips are dropped and batches form
  # afterwards, so the stream is the same whatever data.num_workers is.
  ds = ds.filter(_DropSkipped(source, len(source),
                              SkipCounter() if skipped is None else skipped))
  return ds.batch(local_batch, drop_remainder=True)


def eval_dataset(source, data, *, local_batch: int,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 skipped: SkipCounter | None = None) -> tuple[grain.IterDataset, int]:
  """This process's evaluation batches ({'image', 'label', 'index', 'mask'}) and their
  number, the same on every process; corrupt images it skips are counted in
  `skipped`."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  indices = range(index, len(source), count)
  num_batches = math.ceil(math.ceil(len(source) / count) / local_batch)
  ds = grain.MapDataset.range(num_batches * local_batch)
  ds = ds.map(_EvalExample(source, options(data), indices, data.skip_corrupt,
                           SkipCounter() if skipped is None else skipped))
  ds = _prefetch(ds.to_iter_dataset(_read_options(data)), data)
  return ds.batch(local_batch), num_batches


def network_input(images: jax.Array) -> jax.Array:
  """A batch's images as the network takes them, in [-1, 1]: the pipeline
  delivers uint8 pixels (a quarter of float32's bytes to copy, batch and send
  to the devices), scaled here on the device to exactly the float32 values
  `preprocess.to_unit_range` gives (looked up: XLA would fuse x · 2/255 − 1
  into one rounding); float32 images (after colour distortion) arrive scaled."""
  if images.dtype != jnp.uint8:
    return images
  return jnp.asarray(_UNIT_RANGE)[images]


_UNIT_RANGE = preprocess.to_unit_range(np.arange(256, dtype=np.uint8))


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Local batches of every process → one global, data-sharded jax.Array each."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


class Loader:
  """Global batches from a Grain dataset; its position can be saved and restored.
  The first batch is read at once, so data that cannot give one (a corrupt
  image, nothing decodable) fails here, before anything is compiled."""

  def __init__(self, dataset: grain.IterDataset, sharding=None, micro_batches: int = 1):
    self._iterator = iter(dataset)
    self.sharding, self.micro_batches = sharding, micro_batches
    self._start = self._iterator.get_state()
    try:
      self._first = next(self._iterator)
    except BaseException:
      self.close()
      raise

  def __iter__(self):
    return self

  def __next__(self):
    if self._first is not None:
      batch, self._first = self._first, None
    else:
      batch = next(self._iterator)
    if self.micro_batches > 1:      # (micro-batches, rows, …): gradient accumulation
      batch = {k: v.reshape(self.micro_batches, -1, *v.shape[1:]) for k, v in batch.items()}
    return batch if self.sharding is None else to_global(batch, self.sharding)

  def get_state(self):
    return self._start if self._first is not None else self._iterator.get_state()

  def set_state(self, state) -> None:
    self._first = None
    self._iterator.set_state(state)

  def close(self) -> None:
    """Stop Grain's threads and worker processes (idempotent)."""
    self._iterator.close()

