"""`python -m inception_jax prepare NAME [--manual_dir DIR] [--data_dir DIR]`:
a TFDS dataset made ready for training, in the format that `tfds.data_source`
reads at random (ArrayRecord).

  prepare imagenet2012 --manual_dir ~/ILSVRC2012 --data_dir ~/tensorflow_datasets

runs TFDS's own registered `imagenet2012` builder on the tar files that
image-net.org hands out (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
optionally ILSVRC2012_img_test.tar), after checking them (`check_imagenet`).
A dataset that TFDS prepared earlier in its default format, TFRecord, gets
ArrayRecord files written beside its own (`_add_array_record`): no manual
directory needed.

Why not `tfds build`: TFDS's command line imports Apache Beam at start-up
(tensorflow/datasets#5463, even for builders that never use it), and every
Beam release up to 2.78 requires protobuf < 7 and pyarrow < 26, which this
project's lock (protobuf 7, pyarrow 26) excludes. TFDS's Python API needs
no Beam; building needs TensorFlow (TFDS decodes and re-encodes ImageNet's
CMYK and PNG images with it) and `importlib_resources`, both in
requirements-prepare.txt.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tarfile

from inception_jax import compat
from inception_jax.data import sources
from inception_jax.errors import UserError

log = logging.getLogger(__name__)

PREPARE_ENV = "make prepare-venv in a checkout, or pip install 'inception_jax[prepare]'"

# ILSVRC2012 as image-net.org distributes it.
TRAIN_TAR, VAL_TAR, TEST_TAR = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
                                'ILSVRC2012_img_test.tar')
SYNSETS, VALIDATION_IMAGES = 1000, 50_000
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')
_SYNSET_TAR = re.compile(r'(n\d{8})\.tar')


def prepare(name: str, manual_dir: str | None = None, data_dir: str | None = None) -> str:
  """Prepare TFDS dataset `name` in `data_dir` (TFDS's default when None) as
  ArrayRecord; returns a summary of what is there."""
  tfds = _import_tfds_builders()
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  with sources.tfds_quiet():
    builder = _builder(tfds, name, data_dir)
    prepared = builder.is_prepared()
  if prepared:
    formats = tfds.builder_from_directory(builder.data_dir).info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD in formats:
      log.info('%s is prepared as ArrayRecord in %s already (delete that folder to '
               'build it again)', name, builder.data_dir)
    else:
      _add_array_record(builder.data_dir)
  else:
    if manual_dir is not None and not os.path.isdir(manual_dir):
      raise UserError(f'--manual_dir {manual_dir} is not a directory')
    if builder.name == 'imagenet2012':
      if manual_dir is None:
        raise UserError(f'imagenet2012 is built from the ILSVRC2012 tar files: give their '
                        f'directory with --manual_dir DIR ({TRAIN_TAR}, {VAL_TAR})')
      for note in check_imagenet(manual_dir, builder.info.features['label'].names):
        log.info('%s', note)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        file_format='array_record')
  return summary(tfds.builder_from_directory(builder.data_dir), data_dir)


def summary(builder, data_dir: str | None) -> str:
  splits = ', '.join(f'{split} {info.num_examples:,}'
                     for split, info in sorted(builder.info.splits.items()))
  where = f' --config.data.data_dir={data_dir}' if data_dir else ''
  return (f'{builder.name} {builder.info.version} in {builder.data_dir}: {splits} '
          f'(ArrayRecord)\n'
          f'train on it: python -m inception_jax train --config CONFIG '
          f'--config.data.name=tfds:{builder.name}{where} --workdir RUN')


def _import_tfds_builders():
  """TFDS, with what its registered builders need (one line if missing)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')     # TensorFlow's start-up notes
  for module, why in (('tensorflow', "TFDS's builders decode images with it"),
                      ('importlib_resources', "TFDS's registered builders import it")):
    try:
      __import__(module)
    except ImportError:
      raise UserError(f'preparing a dataset needs {module} ({why}): {PREPARE_ENV}') from None
  import tensorflow_datasets as tfds
  return tfds


def _builder(tfds, name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    close = difflib.get_close_matches(name, tfds.list_builders(), n=1)
    hint = f' (did you mean {close[0]}?)' if close else ''
    raise UserError(f'TFDS has no dataset {name!r}{hint}') from None


# --- ImageNet's tar files ----------------------------------------------------


def check_imagenet(manual_dir: str, synsets: list[str]) -> list[str]:
  """Check the ILSVRC2012 tar files in `manual_dir` before TFDS reads them;
  returns notes (a partial copy), raises UserError on what TFDS would build
  wrongly or fail on hours in."""
  train, val = (os.path.join(manual_dir, f) for f in (TRAIN_TAR, VAL_TAR))
  if not (os.path.exists(train) or os.path.exists(val)):
    raise UserError(f'{manual_dir} holds neither {TRAIN_TAR} nor {VAL_TAR} '
                    f'(the ILSVRC2012 files from image-net.org)')
  notes = []
  if os.path.exists(train):
    notes.append(check_train_names(_member_names(train), set(synsets)))
  else:
    notes.append(f'{TRAIN_TAR} is not in {manual_dir}: no train split')
  if os.path.exists(val):
    notes.append(check_validation_names(_member_names(val)))
  else:
    notes.append(f'{VAL_TAR} is not in {manual_dir}: no validation split')
  return notes


def _member_names(path: str) -> list[str]:
  """Every member's name, folders with a trailing '/'."""
  try:
    with tarfile.open(path, 'r:') as tar:
      return [m.name + ('/' if m.isdir() else '') for m in tar]
  except (tarfile.TarError, OSError) as e:
    raise UserError(f'{path} is not a readable tar file: {e}') from None


def check_train_names(names: list[str], synsets: set[str]) -> str:
  """ILSVRC2012_img_train.tar holds one tar per synset (n01440764.tar …):
  TFDS labels each image by its tar's name."""
  found = []
  for name in names:
    match = _SYNSET_TAR.fullmatch(name)
    if not match or match[1] not in synsets:
      raise UserError(f'{TRAIN_TAR} holds {name!r}; it should hold only the tar files of '
                      f"ILSVRC2012's synsets (n01440764.tar, …), at its top level")
    found.append(match[1])
  if not found:
    raise UserError(f'{TRAIN_TAR} is empty')
  if len(set(found)) != len(found):
    raise UserError(f'{TRAIN_TAR} holds a synset twice')
  if len(found) < SYNSETS:
    return f'{TRAIN_TAR}: {len(found)} of the {SYNSETS} synsets (a partial copy)'
  return f'{TRAIN_TAR}: all {SYNSETS} synsets'


def check_validation_names(names: list[str]) -> str:
  """TFDS labels the validation images by their sorted position among the tar's
  names (line k of its validation_labels.txt for the k-th name), so the tar
  must hold ILSVRC2012_val_00000001.JPEG … ILSVRC2012_val_N.JPEG at its top
  level and nothing else: a folder, another file or a gap would shift the
  label of every image after it, silently."""
  repack = ('repack it flat: (cd DIR && ls | grep ILSVRC2012_val_ | '
            f'tar -cf ../{VAL_TAR} -T -)')
  numbers = []
  for name in names:
    match = _VAL_NAME.fullmatch(name)
    if not match:
      raise UserError(f'{VAL_TAR} holds {name!r}: TFDS labels its images by their sorted '
                      f'position, so anything but ILSVRC2012_val_NNNNNNNN.JPEG at the top '
                      f'level mislabels them; {repack}')
    numbers.append(int(match[1]))
  if not numbers:
    raise UserError(f'{VAL_TAR} is empty')
  numbers.sort()
  for expected, number in enumerate(numbers, start=1):
    if number != expected:
      wrong = (f'ILSVRC2012_val_{number:08d}.JPEG is there twice' if number < expected
               else f'ILSVRC2012_val_{expected:08d}.JPEG is missing')
      raise UserError(f'{VAL_TAR}: {wrong}; TFDS labels the images by their sorted '
                      f"position, so every later image would take another image's label")
  if len(numbers) > VALIDATION_IMAGES:
    raise UserError(f'{VAL_TAR} holds {len(numbers):,} images; ILSVRC2012 has '
                    f'{VALIDATION_IMAGES:,}')
  if len(numbers) < VALIDATION_IMAGES:
    return (f'{VAL_TAR}: the first {len(numbers):,} of the {VALIDATION_IMAGES:,} '
            f'validation images (a partial copy; their labels are right)')
  return f'{VAL_TAR}: all {VALIDATION_IMAGES:,} validation images'


# --- TFRecord → ArrayRecord ---------------------------------------------------


def _add_array_record(version_dir: str) -> None:
  """ArrayRecord files beside a TFRecord-prepared dataset's, recorded in its
  dataset_info.json as an alternative format: TFDS's own converter, run
  without Beam (`compat.convert_to_array_record`)."""
  log.info('%s is stored as TFRecord: adding ArrayRecord files beside them '
           '(as much disk space again)', version_dir)
  # Quiet: without Beam it warns of a shard count it never computed (a
  # format string without its values); a missing shard still raises.
  with sources.tfds_quiet():
    compat.convert_to_array_record(version_dir, num_workers=os.cpu_count() or 1)
