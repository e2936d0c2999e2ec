"""Random-access data sources, chosen by `config.data.name`:

  synthetic     the embedded dataset (`synthetic.py`): no files, no download
  folder        `config.data.path` = ROOT with ROOT/train/<class>/* and
                ROOT/validation/<class>/* (JPEG or PNG); class ids from the
                sorted folder names of train/
  tfds:NAME     a TFDS dataset prepared in ArrayRecord format (`prepare.py`),
                read at random through TFDS (`config.data.data_dir`)

Each source has `len()`, `[index]` → {'image': encoded bytes or uint8 array,
'label': int, 'where': a name for error messages}, `num_classes`, `where`,
the split's name for error messages, `names()`, each example's file name
(for `data.eval_exclude`, `Excluding`), and `class_names()` (for `predict`).
`class_names(data_cfg)` and `num_classes(data_cfg)` read the classes from
what describes the dataset, without a source (for `cost`, and for runs older
than their classes.json).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os

from inception_jax.data.preprocess import CorruptImageError
from inception_jax.data.synthetic import SyntheticSource
from inception_jax.errors import ConfigError, UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')

log = logging.getLogger(__name__)


class Synthetic(SyntheticSource):
  where = 'the synthetic dataset'

  def names(self) -> list[str]:
    return [f'synthetic_{i}' for i in range(len(self))]

  def class_names(self) -> list[str]:
    return _synthetic_class_names(self.num_classes)

  def __getitem__(self, index):
    record = super().__getitem__(index)
    record['where'] = f'synthetic example {index}'
    return record


def _synthetic_class_names(count: int) -> list[str]:
  from inception_jax.data.synthetic import MAX_CLASSES, class_parts
  if not 2 <= count <= MAX_CLASSES:
    raise ConfigError(f'data (synthetic): the synthetic dataset has 2 to {MAX_CLASSES} '
                      f'classes, got {count}')
  return [' '.join(map(str, class_parts(c))) for c in range(count)]


class FolderSource:
  """Images under ROOT/SPLIT/<class>/; labels from the sorted class folders
  of ROOT/train (so train and validation agree)."""

  def __init__(self, root: str, split: str):
    self.classes = _class_folders(root, 'train')
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise ConfigError(f'data.path: {split_dir} does not exist '
                        f'(expected ROOT/{split}/<class>/*.jpg)')
    unknown = sorted(set(_class_folders(root, split)) - set(self.classes))
    if unknown:
      raise ConfigError(f'{split_dir} has classes missing from train/: {unknown}')
    self.files = [
        (os.path.join(split_dir, name, f), label)
        for label, name in enumerate(self.classes)
        if os.path.isdir(os.path.join(split_dir, name))
        for f in sorted(os.listdir(os.path.join(split_dir, name)))
        if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not self.files:
      raise ConfigError(f'{split_dir} holds no .jpg, .jpeg or .png images')
    self.num_classes = len(self.classes)
    self.where = split_dir

  def __len__(self):
    return len(self.files)

  def __getitem__(self, index):
    path, label = self.files[index]
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise CorruptImageError(f'cannot read {path}: {e.strerror or e}') from None
    return {'image': data, 'label': label, 'where': path}

  def class_names(self) -> list[str]:
    return list(self.classes)

  def names(self) -> list[str]:
    """CLASS/FILE of each image (`Excluding` matches FILE alone too)."""
    return [os.path.relpath(path, self.where) for path, _ in self.files]

  def __repr__(self):
    return f'FolderSource({len(self.files)} images, {self.num_classes} classes)'


def _class_folders(root: str, split: str) -> list[str]:
  if not root:
    raise ConfigError("data.name='folder' needs data.path=ROOT "
                      '(ROOT/train/<class>/*.jpg, ROOT/validation/<class>/*.jpg)')
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise ConfigError(f'data.path: {split_dir} does not exist '
                      f'(expected ROOT/{split}/<class>/*.jpg)')
  # Hidden folders (.ipynb_checkpoints, .DS_Store, .git) are not classes:
  # one would shift every label after it.
  classes = sorted(d for d in os.listdir(split_dir)
                   if not d.startswith('.') and os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise ConfigError(f'{split_dir} has no class folders')
  return classes


class TfdsSource:
  """A TFDS image-classification dataset prepared as ArrayRecord files
  (`python -m inception_jax prepare NAME`); images stay encoded until
  preprocessing. Data prepared in another format, a `data_dir` one level too
  deep, a split that is not there or has no labels: one line each."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    # Read from the prepared files' own metadata (`builder_from_directory`):
    # the registered builder ignores the ArrayRecord files that `prepare`
    # adds beside TFRecord ones (DatasetInfo.read_from_directory skips
    # alternative_file_formats in TFDS 4.9).
    reader = tfds.builder_from_directory(_prepared_dir(tfds, name, data_dir))
    info = reader.info
    if not info.available_file_formats() & tfds.core.FileFormat.with_random_access():
      raise UserError(
          f'TFDS dataset {name!r} in {reader.data_dir} is stored as '
          f'{_FORMAT_NAMES.get(info.file_format.value, info.file_format.value)}, which has '
          f'no random access; add ArrayRecord files '
          f'beside it with `python -m inception_jax prepare {name}'
          f'{f" --data_dir {data_dir}" if data_dir else ""}` (as much disk space again)')
    if split not in info.splits:
      raise ConfigError(f'TFDS dataset {name!r} in {reader.data_dir} has no split '
                        f'{split!r}; it has {", ".join(sorted(info.splits))}')
    label = _class_label(tfds, info, name)
    self._source = reader.as_data_source(
        split, decoders={'image': tfds.decode.SkipDecoding()})
    self.num_classes = label.num_classes
    self._class_names = list(label.names)
    self.name, self.split = name, split
    self.where = f'TFDS {name}[{split}]'
    if len(self) and int(self._source[0]['label']) < 0:
      raise ConfigError(f'{self.where} has no labels (label -1, as ImageNet\'s test split): '
                        f'it cannot be trained or evaluated on')

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = self._source[index]
    return {'image': record['image'], 'label': int(record['label']),
            'where': f'{self.name}[{self.split}] example {index}'}

  def class_names(self) -> list[str]:
    return self._class_names

  def names(self) -> list[str]:
    """The `file_name` feature of every example (a pass over the split)."""
    log.info('reading the file names of %s (%d examples) once', self.where, len(self))
    try:
      return [_text(self._source[i]['file_name']) for i in range(len(self))]
    except KeyError:
      raise ConfigError(f'{self.where} has no file_name feature: data.eval_exclude '
                        f'cannot name its examples') from None

  def __repr__(self):
    return f'TfdsSource({self.name}[{self.split}], {len(self)} examples)'


def _class_label(tfds, info, name: str):
  """The `label` feature (a ClassLabel) of TFDS dataset `name`'s metadata,
  which must describe images with class labels."""
  features = list(info.features.keys()) if hasattr(info.features, 'keys') else []
  label = info.features['label'] if 'label' in features else None
  if not isinstance(label, tfds.features.ClassLabel) or 'image' not in features:
    raise ConfigError(f'TFDS dataset {name!r} is not an image classification dataset '
                      f'(features: {", ".join(sorted(features)) or "one"}; needed: image and '
                      f'label, a class label)')
  return label


def _tfds_class_names(name: str, data_dir: str | None) -> list[str]:
  """A prepared TFDS dataset's class names from its metadata (dataset_info.json),
  whatever format its examples are stored in: none is opened."""
  import tensorflow_datasets as tfds
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  info = tfds.builder_from_directory(_prepared_dir(tfds, name, data_dir)).info
  return list(_class_label(tfds, info, name).names)


@contextlib.contextmanager
def tfds_quiet():
  """TFDS's warnings off while it looks for data that may not be there yet
  ("Variant folder … has no dataset_info.json"): the caller says what is wrong."""
  absl = logging.getLogger('absl')
  level = absl.level
  absl.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl.setLevel(level)


_FORMAT_NAMES = {'tfrecord': 'TFRecord', 'riegeli': 'Riegeli'}


def _prepared_dir(tfds, name: str, data_dir: str | None) -> str:
  """The version folder of prepared dataset `name` in `data_dir`."""
  try:
    with tfds_quiet():
      builder = tfds.builder(name, data_dir=data_dir)
      prepared = builder.is_prepared()
  except Exception as e:            # an unknown name, a bad version: TFDS's own words
    raise UserError(f'TFDS dataset {name!r}: {str(e).splitlines()[0]}') from None
  if prepared:
    return builder.data_dir
  base = name.split(':')[0].split('/')[0]
  parts = os.path.abspath(data_dir or '').split(os.sep)
  inside = data_dir and any(glob.glob(os.path.join(data_dir, *['*'] * depth,
                                                   'dataset_info.json'))
                            for depth in range(3))           # version, config/version
  if inside and base in parts:
    above = os.sep.join(parts[:parts.index(base)]) or os.sep
    raise UserError(f'data.data_dir {data_dir} is inside the dataset; give the folder '
                    f'that holds {base}/: --config.data.data_dir={above}')
  raise UserError(
      f'TFDS dataset {name!r} is not prepared in {data_dir or "~/tensorflow_datasets"}; '
      f'prepare it with `python -m inception_jax prepare {base} [--manual_dir DIR]'
      f'{f" --data_dir {data_dir}" if data_dir else ""}` (see docs/data.md)')


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class Excluding:
  """A split less the examples named in a file (`data.eval_exclude`): the
  paper evaluates on the 48,238 validation images outside the ILSVRC 2014
  blacklist. Each line of the file is a file name (ILSVRC2012_val_00000001.JPEG)
  or a number N, the blacklist's own form, meaning ILSVRC2012_val_N
  (zero-padded to 8 digits); blank lines and '#' comments are ignored. A
  name matches an example's name (`names()`) or its last path component."""

  def __init__(self, source, path: str):
    names = _read_exclusions(path)
    self._source, self.num_classes, self.path = source, source.num_classes, path
    own = self._names = source.names()
    left_out = lambda name: name in names or os.path.basename(name) in names
    self._kept = [i for i, name in enumerate(own) if not left_out(name)]
    known = set(own) | {os.path.basename(name) for name in own}
    unknown = len(names - known)
    self.excluded = len(own) - len(self._kept)
    self.where = source.where
    log.info('%d of %d examples of %s left out (%s)%s',
             self.excluded, len(own), source.where, path,
             f'; {unknown} names of the file are not in it' if unknown else '')

  def __len__(self):
    return len(self._kept)

  def names(self) -> list[str]:
    return [self._names[i] for i in self._kept]

  def __getitem__(self, index):
    return self._source[self._kept[index]]

  def __repr__(self):
    return f'{self._source!r} less {self.excluded} excluded'


def _read_exclusions(path: str) -> set[str]:
  try:
    with open(path) as f:
      lines = [line.split('#')[0].strip() for line in f]
  except OSError as e:
    raise ConfigError(f'cannot read the exclusion file {path}: {e.strerror or e}') from None
  return {f'ILSVRC2012_val_{int(line):08d}.JPEG' if line.isdigit() else line
          for line in lines if line}


def make_source(data_cfg, split: str, exclude: str | None = None):
  """The source named by `data_cfg.name` (`data_cfg`: a `specs.DataSpec`) for
  `split` (`data.train_split` or `data.eval_split`), less the examples named
  in file `exclude` (default: `data.eval_exclude` for the evaluation split;
  '' for none). Synthetic images are drawn at image_size / 0.875, so
  evaluation's central crop returns the network's input size."""
  source = _source(data_cfg, split)
  if exclude is None:
    exclude = data_cfg.eval_exclude if split == data_cfg.eval_split else ''
  if exclude:
    source = Excluding(source, exclude)
    if not len(source):
      raise ConfigError(f'{exclude} leaves no example of {source.where} to evaluate')
  return source


def class_names(data_cfg) -> list[str]:
  """The configured dataset's class names, in label order, from what
  describes it rather than its examples (no source or pipeline is built):
  the synthetic dataset's `num_classes`, the class folders of ROOT/train/, a
  TFDS dataset's metadata. For counting a config's classes (`cost`) and for
  naming those of a run older than its classes.json (`trainstate`)."""
  name = data_cfg.name
  if name == 'synthetic':
    return _synthetic_class_names(data_cfg.num_classes)
  if name == 'folder':
    return _class_folders(data_cfg.path, 'train')
  if name.startswith('tfds:'):
    return _tfds_class_names(name[len('tfds:'):], data_cfg.data_dir)
  raise _unknown_name(name)


def num_classes(data_cfg) -> int:
  """The configured dataset's number of classes (`class_names`)."""
  return len(class_names(data_cfg))


def _unknown_name(name: str) -> ConfigError:
  return ConfigError(f"data.name must be 'synthetic', 'folder' or 'tfds:NAME', "
                     f'got {name!r}')


def _source(data_cfg, split: str):
  name = data_cfg.name
  if name == 'synthetic':
    train = split == data_cfg.train_split
    try:
      return Synthetic(num_examples=data_cfg.num_train if train else data_cfg.num_eval,
                       num_classes=data_cfg.num_classes,
                       image_size=round(data_cfg.image_size / 0.875),
                       split='train' if train else 'validation',
                       object_size=tuple(data_cfg.object_size))
    except ValueError as e:
      raise ConfigError(f'data (synthetic): {e}') from None
  if name == 'folder':
    return FolderSource(data_cfg.path, split)
  if name.startswith('tfds:'):
    return TfdsSource(name[len('tfds:'):], split, data_cfg.data_dir)
  raise _unknown_name(name)
