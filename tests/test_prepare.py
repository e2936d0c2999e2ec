"""ImageNet as its users prepare it: a miniature ILSVRC2012 (the tar files that
image-net.org hands out, five synsets) built by `prepare imagenet2012` through
TFDS's registered builder, then trained on, evaluated with an exclusion file
and predicted from; and the mistakes users make, one line each."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from helpers import TINY_CONFIG, run_cli
from PIL import Image

from inception_jax import evaluate
from inception_jax.data import prepare, sources
from inception_jax.errors import UserError

SYNSETS = ['n01440764', 'n01739381', 'n01751748', 'n02105855', 'n09193705']
# Two of ImageNet's odd files, by the names TFDS's builder knows them by: a
# CMYK JPEG and a PNG named .JPEG. Both must come out as RGB JPEGs.
CMYK, PNG = 'n01739381_1309.JPEG', 'n02105855_2933.JPEG'
# The ILSVRC2012 devkit's ground truth of the first six validation images.
VALIDATION_SYNSETS = ['n01751748', 'n09193705', 'n02105855', 'n04263257', 'n03125729',
                      'n01735189']
TRAIN_IMAGES = 4 * len(SYNSETS) + 2
pytestmark = pytest.mark.xdist_group('imagenet')


def _encoded(mode: str, seed: int, fmt: str = 'JPEG') -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, fmt)
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_ilsvrc2012(manual_dir, validation=len(VALIDATION_SYNSETS), test=2,
                    validation_names=None):
  """ILSVRC2012_img_{train,val,test}.tar as image-net.org hands them out, in
  miniature: per synset a tar of four JPEGs (one grayscale), plus the CMYK
  and the PNG file; validation and test images named as the real ones."""
  os.makedirs(manual_dir, exist_ok=True)
  with tarfile.open(os.path.join(manual_dir, prepare.TRAIN_TAR), 'w') as train:
    for k, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        for i in range(4):
          _add(tar, f'{synset}_{i}.JPEG', _encoded('L' if i == 1 else 'RGB', 10 * k + i))
        if CMYK.startswith(synset):
          _add(tar, CMYK, _encoded('CMYK', 100))
        if PNG.startswith(synset):
          _add(tar, PNG, _encoded('RGB', 101, 'PNG'))
      _add(train, f'{synset}.tar', inner.getvalue())
  names = validation_names or [f'ILSVRC2012_val_{i:08d}.JPEG'
                               for i in range(1, validation + 1)]
  with tarfile.open(os.path.join(manual_dir, prepare.VAL_TAR), 'w') as tar:
    for i, name in enumerate(names):
      _add(tar, name, _encoded('RGB', 200 + i))
  if test:
    with tarfile.open(os.path.join(manual_dir, prepare.TEST_TAR), 'w') as tar:
      for i in range(1, test + 1):
        _add(tar, f'ILSVRC2012_test_{i:08d}.JPEG', _encoded('RGB', 300 + i))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The miniature prepared by the command line: (data_dir, its output)."""
  root = tmp_path_factory.mktemp('imagenet')
  make_ilsvrc2012(root / 'manual')
  proc = run_cli('prepare', 'imagenet2012', '--manual_dir', root / 'manual',
                 '--data_dir', root / 'data', devices=1)
  assert proc.returncode == 0, proc.stderr
  return str(root / 'data'), proc


def test_prepare_builds_imagenet_with_tfds_registered_builder(prepared):
  data_dir, proc = prepared
  assert (f'imagenet2012 5.1.0 in {data_dir}/imagenet2012/5.1.0: test 2, train '
          f'{TRAIN_IMAGES}, validation 6 (ArrayRecord)') in proc.stdout
  assert f'--config.data.data_dir={data_dir}' in proc.stdout
  assert '5 of the 1000 synsets (a partial copy)' in proc.stderr
  assert 'the first 6 of the 50,000 validation images (a partial copy' in proc.stderr
  assert 'Generating train examples' in proc.stderr           # TFDS's progress
  files = os.listdir(os.path.join(data_dir, 'imagenet2012', '5.1.0'))
  assert 'imagenet2012-train.array_record-00000-of-00001' in files

  train = sources.make_source(_data_cfg(data_dir), 'train')
  assert train.num_classes == 1000 and train.class_names()[0] == 'n01440764'
  by_name = {name: train[i] for i, name in enumerate(train.names())}
  assert len(by_name) == TRAIN_IMAGES
  for name, record in by_name.items():
    image = Image.open(io.BytesIO(record['image']))
    assert image.format == 'JPEG', name                     # the PNG re-encoded
    assert image.mode == ('L' if name.endswith('_1.JPEG') else 'RGB'), name   # CMYK → RGB
    assert train.class_names()[record['label']] == name.split('_')[0]
  # Validation labels by TFDS's position rule: the devkit's ground truth.
  validation = sources.make_source(_data_cfg(data_dir), 'validation')
  labels = {name: validation.class_names()[validation[i]['label']]
            for i, name in enumerate(validation.names())}
  assert labels == {f'ILSVRC2012_val_{i:08d}.JPEG': synset
                    for i, synset in enumerate(VALIDATION_SYNSETS, start=1)}


def test_train_eval_with_exclusions_and_predict_on_it(prepared, tmp_path, cli_main):
  data_dir, _ = prepared
  run = tmp_path / 'run'
  proc = run_cli('train', '--config', TINY_CONFIG, '--workdir', run,
                 '--config.data.name=tfds:imagenet2012', f'--config.data.data_dir={data_dir}')
  assert proc.returncode == 0, proc.stderr
  member = evaluate.load(str(run))
  assert len(member.class_names) == 1000 and member.params['Logits']['kernel'].shape[-1] == 1000

  blacklist = tmp_path / 'blacklist.txt'     # the ILSVRC 2014 blacklist's form: numbers
  blacklist.write_text('2\n# a comment\n5\n40000\n')
  proc = run_cli('eval', '--workdir', run, '--exclude', blacklist, '--crops', 12, '--json')
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  assert (result['examples'], result['excluded'], result['exclude']) == (4, 2, str(blacklist))
  code, out, _ = cli_main('eval', '--workdir', run, '--exclude', blacklist)
  assert code == 0 and f'(4 images (2 left out by {blacklist}) × 1 crops' in out
  code, out, _ = cli_main('eval', '--workdir', run, '--json')
  assert code == 0 and (json.loads(out)['examples'], json.loads(out)['excluded']) == (6, 0)

  photo = tmp_path / 'photo.jpg'
  photo.write_bytes(_encoded('RGB', 7))
  code, out, _ = cli_main('predict', '--workdir', run, '--json', photo)
  classes = json.loads(out)[0]['classes']
  assert code == 0 and len(classes) == 5
  assert all(name in member.class_names and name[0] == 'n' for name in classes)
  labels = tmp_path / 'labels.txt'
  labels.write_text(''.join(f'{synset} name\n' for synset in member.class_names))
  code, out, _ = cli_main('predict', '--workdir', run, '--labels', labels, '--json', photo)
  assert code == 0 and json.loads(out)[0]['classes'] == [f'{c} name' for c in classes]


def test_data_mistakes_are_one_line_and_write_nothing(prepared, tmp_path, cli_main):
  data_dir, _ = prepared
  version_dir = os.path.join(data_dir, 'imagenet2012', '5.1.0')
  mistakes = {
      f'--config.data.data_dir={version_dir}':
          f'inside the dataset; give the folder that holds imagenet2012/: '
          f'--config.data.data_dir={data_dir}',
      f'--config.data.data_dir={tmp_path}':
          f'not prepared in {tmp_path}; prepare it with `python -m inception_jax prepare',
      '--config.data.eval_split=val': "has no split 'val'; it has test, train, validation",
      '--config.data.eval_split=test': 'TFDS imagenet2012[test] has no labels',
  }
  for mistake, message in mistakes.items():
    code, out, err = cli_main('train', '--config', TINY_CONFIG, '--workdir', tmp_path / 'run',
                              '--config.data.name=tfds:imagenet2012',
                              f'--config.data.data_dir={data_dir}', mistake)
    assert (code, out) == (2, ''), mistake
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err, err
    assert not (tmp_path / 'run').exists()


def test_tfrecord_data_is_refused_in_one_line_then_converted(tmp_path, cli_main):
  """Data that TFDS prepared in its default format (TFRecord, as `tfds build`
  writes it): training names the conversion; `prepare` adds ArrayRecord files
  with the very examples TFDS itself reads from the TFRecord files."""
  import tensorflow_datasets as tfds
  make_ilsvrc2012(tmp_path / 'manual', test=0)
  builder = tfds.builder('imagenet2012', data_dir=str(tmp_path / 'data'))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))
  data = f'--config.data.data_dir={tmp_path / "data"}'
  code, _, err = cli_main('train', '--config', TINY_CONFIG, '--workdir', tmp_path / 'run',
                          '--config.data.name=tfds:imagenet2012', data)
  assert code == 2 and err.count('\n') == 1 and not (tmp_path / 'run').exists()
  assert (f'is stored as TFRecord, which has no random access; add ArrayRecord files beside '
          f'it with `python -m inception_jax prepare imagenet2012 --data_dir '
          f'{tmp_path / "data"}`') in err

  assert cli_main('prepare', 'imagenet2012', '--data_dir', tmp_path / 'data')[0] == 0
  source = sources.make_source(_data_cfg(str(tmp_path / 'data')), 'validation')
  converted = {name: source[i]['image'] for i, name in enumerate(source.names())}
  reference = {example['file_name'].decode(): example['image'] for example in tfds.as_numpy(
      builder.as_dataset(split='validation', decoders={'image': tfds.decode.SkipDecoding()}))}
  assert converted == reference and len(converted) == 6


def test_a_dataset_without_class_labels_is_one_line(tmp_path):
  import tensorflow_datasets as tfds

  class UnlabelledImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
          'caption': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(2):
        yield i, {'image': np.zeros((8, 8, 3), np.uint8), 'caption': 'nothing'}

  UnlabelledImages(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  config = _data_cfg(str(tmp_path))
  config.name = 'tfds:unlabelled_images'
  with pytest.raises(UserError, match=r"'unlabelled_images' is not an image classification "
                                      r'dataset \(features: caption, image; needed'):
    sources.make_source(config, 'train')


@pytest.mark.parametrize('names, message', [
    (['val/ILSVRC2012_val_00000001.JPEG'], "holds 'val/ILSVRC2012_val_00000001.JPEG'"),
    (['./', './ILSVRC2012_val_00000001.JPEG'], "holds './'"),
    (['._ILSVRC2012_val_00000001.JPEG'], "holds '._ILSVRC2012_val_00000001.JPEG'"),
    ([f'ILSVRC2012_val_{i:08d}.JPEG' for i in (1, 2, 4)],
     'ILSVRC2012_val_00000003.JPEG is missing'),
    ([f'ILSVRC2012_val_{i:08d}.JPEG' for i in (1, 2, 2, 3)],
     'ILSVRC2012_val_00000002.JPEG is there twice'),
    ([f'ILSVRC2012_val_{i:08d}.JPEG' for i in range(2, 4)],
     'ILSVRC2012_val_00000001.JPEG is missing'),
    ([], 'ILSVRC2012_img_val.tar is empty'),
])
def test_validation_tar_that_tfds_would_mislabel_is_refused(names, message):
  with pytest.raises(UserError, match=message.replace('.', r'\.')):
    prepare.check_validation_names(names)


def test_validation_tar_complete_or_partial():
  complete = [f'ILSVRC2012_val_{i:08d}.JPEG' for i in range(50_000, 0, -1)]
  assert prepare.check_validation_names(complete) == (
      'ILSVRC2012_img_val.tar: all 50,000 validation images')
  assert 'the first 3 of the 50,000' in prepare.check_validation_names(complete[-3:])
  with pytest.raises(UserError, match='holds 50,001 images'):
    prepare.check_validation_names(complete + ['ILSVRC2012_val_00050001.JPEG'])
  with pytest.raises(UserError, match="holds 'README.txt'"):
    prepare.check_train_names(['n01440764.tar', 'README.txt'], {'n01440764'})
  assert prepare.check_train_names(['n01440764.tar'], {'n01440764'}) == (
      'ILSVRC2012_img_train.tar: 1 of the 1000 synsets (a partial copy)')


def test_prepare_refuses_a_repacked_tar_before_writing(tmp_path, cli_main):
  make_ilsvrc2012(tmp_path / 'manual', validation_names=[
      f'ILSVRC2012_val_{i:08d}.JPEG' for i in (1, 2, 3, 5)])
  code, out, err = cli_main('prepare', 'imagenet2012', '--manual_dir', tmp_path / 'manual',
                            '--data_dir', tmp_path / 'data')
  assert (code, out) == (2, '') and err.count('\n') == 1
  assert err.startswith('error: ILSVRC2012_img_val.tar: ILSVRC2012_val_00000004.JPEG is '
                        'missing; TFDS labels the images by their sorted position')
  assert not (tmp_path / 'data').exists()
  code, _, err = cli_main('prepare', 'imagenet2012', '--data_dir', tmp_path / 'data')
  assert code == 2 and 'give their directory with --manual_dir DIR' in err
  code, _, err = cli_main('prepare', 'imagenet2012', '--manual_dir', tmp_path,
                          '--data_dir', tmp_path / 'data')
  assert code == 2 and 'holds neither ILSVRC2012_img_train.tar nor' in err
  code, _, err = cli_main('prepare', 'imagenet2013', '--manual_dir', tmp_path / 'manual')
  assert code == 2 and "TFDS has no dataset 'imagenet2013' (did you mean imagenet2012?)" in err
  assert not (tmp_path / 'data').exists()


def test_prepare_without_tensorflow_names_the_environment(monkeypatch, cli_main):
  import sys
  monkeypatch.setitem(sys.modules, 'tensorflow', None)      # as in `make`'s runtime venv
  code, _, err = cli_main('prepare', 'imagenet2012', '--manual_dir', '.')
  assert code == 2 and err == ("error: preparing a dataset needs tensorflow (TFDS's builders "
                               "decode images with it): make prepare-venv in a checkout, or "
                               "pip install 'inception_jax[prepare]'\n")


def _data_cfg(data_dir):
  import ml_collections
  return ml_collections.ConfigDict(dict(name='tfds:imagenet2012', data_dir=data_dir,
                                        train_split='train', eval_split='validation',
                                        eval_exclude=''))
