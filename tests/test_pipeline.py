"""The input pipeline: determinism, sharding, exact resume, exact evaluation,
the three sources and the Inception preprocessing."""

import functools
import io
import os
import pickle

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import RUN_FAST
from PIL import Image

from inception_jax import config_lib
from inception_jax.data import pipeline, preprocess, sources, synthetic
from inception_jax.errors import ConfigError, UserError


def data_cfg(**overrides):
  cfg = config_lib.load('configs/inception_v3.py:scale=tiny').data
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.update(image_size=32, num_train=64, num_eval=37, **overrides)
  return cfg


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_other_seed_differs():
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  a = take(pipeline.train_dataset(src, cfg, seed=3, local_batch=8), 10)
  b = take(pipeline.train_dataset(src, cfg, seed=3, local_batch=8), 10)
  c = take(pipeline.train_dataset(src, cfg, seed=4, local_batch=8), 10)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['index'], y['index'])
  assert any(not np.array_equal(x['index'], z['index']) for x, z in zip(a, c))
  # Ten batches of 8 span two epochs of 64: each epoch is a fresh permutation.
  first, second = (np.concatenate([x['index'] for x in a[i:i + 8]]) for i in (0, 8))
  assert sorted(first) == list(range(64))
  assert not np.array_equal(first[:16], second[:16])
  # uint8 pixels, which the step maps to [-1, 1] on the device.
  assert a[0]['image'].shape == (8, 32, 32, 3) and a[0]['image'].dtype == np.uint8
  network = np.asarray(pipeline.network_input(jnp.asarray(a[0]['image'])))
  assert network.dtype == np.float32 and -1.0 <= network.min() and network.max() <= 1.0


def test_augmentation_is_a_function_of_seed_epoch_and_index():
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  batches = take(pipeline.train_dataset(src, cfg, seed=0, local_batch=8), 16)
  seen = {}
  for epoch, batch_group in enumerate((batches[:8], batches[8:])):
    for batch in batch_group:
      for index, image in zip(batch['index'], batch['image']):
        seen[epoch, int(index)] = image
  # Epoch 2 sees each example again with a different crop/flip.
  assert sum(not np.array_equal(seen[0, i], seen[1, i]) for i in range(64)) > 50
  rng = np.random.default_rng([0, 1, 5])
  expected = preprocess.train_image(src[5]['image'], rng, pipeline.options(cfg))
  # Scaled on the device, the network sees exactly what preprocessing in
  # float32 on the host gives.
  np.testing.assert_array_equal(np.asarray(pipeline.network_input(jnp.asarray(seen[1, 5]))),
                                expected)


def test_colour_distorted_images_travel_as_float32_in_unit_range():
  cfg = data_cfg(color_distort='inception')
  src = sources.make_source(cfg, 'train')
  batch = take(pipeline.train_dataset(src, cfg, seed=0, local_batch=8), 1)[0]
  assert batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert pipeline.network_input(batch['image']) is batch['image']
  rng = np.random.default_rng([0, 0, int(batch['index'][0])])
  np.testing.assert_array_equal(
      batch['image'][0], preprocess.train_image(src[int(batch['index'][0])]['image'], rng,
                                                pipeline.options(cfg)))


@pytest.mark.parametrize('micro_batches', [1, 2])
def test_two_processes_read_shares_of_one_processs_batches(micro_batches):
  """Global batch b is the same for any number of processes: each holds its
  share of every (micro-)batch, laid side by side as `to_global` does."""
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  whole = take(pipeline.train_dataset(src, cfg, seed=0, local_batch=16,
                                      micro_batches=micro_batches), 6)   # 1.5 epochs
  shares = [take(pipeline.train_dataset(src, cfg, seed=0, local_batch=8,
                                        micro_batches=micro_batches,
                                        process_index=p, process_count=2), 6)
            for p in range(2)]
  for b, batch in enumerate(whole):
    for key in ('index', 'image'):
      parts = [share[b][key].reshape(micro_batches, -1, *batch[key].shape[1:])
               for share in shares]
      together = np.concatenate(parts, axis=1).reshape(batch[key].shape)
      np.testing.assert_array_equal(together, batch[key])
  first_epoch = [set(np.concatenate([b['index'] for b in share[:4]])) for share in shares]
  assert not first_epoch[0] & first_epoch[1]
  assert first_epoch[0] | first_epoch[1] == set(range(64))


def test_restored_pipeline_continues_with_the_same_batches():
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  ds = pipeline.train_dataset(src, cfg, seed=0, local_batch=8)
  uninterrupted = take(ds, 12)
  loader = pipeline.Loader(ds)
  for _ in range(5):
    next(loader)
  state = loader.get_state()
  restored = pipeline.Loader(pipeline.train_dataset(src, cfg, seed=0, local_batch=8))
  restored.set_state(state)
  for expected in uninterrupted[5:]:
    got = next(restored)
    np.testing.assert_array_equal(got['index'], expected['index'])
    np.testing.assert_array_equal(got['image'], expected['image'])


def test_worker_processes_give_the_same_resumable_stream():
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  threads = take(pipeline.train_dataset(src, cfg, seed=0, local_batch=8), 6)
  cfg.num_workers = 2
  loader = pipeline.Loader(pipeline.train_dataset(src, cfg, seed=0, local_batch=8))
  got = [next(loader) for _ in range(4)]
  state = loader.get_state()
  restored = pipeline.Loader(pipeline.train_dataset(src, cfg, seed=0, local_batch=8))
  restored.set_state(state)
  got += [next(restored) for _ in range(2)]
  for a, b in zip(threads, got):
    np.testing.assert_array_equal(a['index'], b['index'])
    np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('processes', [1, 2])
def test_evaluation_counts_each_example_once(processes):
  cfg = data_cfg()
  src = sources.make_source(cfg, 'validation')
  assert len(src) == 37
  seen, batches = [], set()
  for p in range(processes):
    ds, num_batches = pipeline.eval_dataset(src, cfg, local_batch=8,
                                            process_index=p, process_count=processes)
    got = list(ds)
    assert len(got) == num_batches
    batches.add(num_batches)
    for b in got:
      seen.extend(b['index'][b['mask'] > 0].tolist())
      assert (b['index'][b['mask'] == 0] == -1).all()
  assert len(batches) == 1                     # every process runs the same count
  assert sorted(seen) == list(range(37))


def test_global_batch_is_sharded_over_all_devices():
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  cfg = data_cfg()
  src = sources.make_source(cfg, 'train')
  loader = pipeline.Loader(pipeline.train_dataset(src, cfg, seed=0, local_batch=16), sharding)
  batch = next(loader)
  assert batch['image'].shape == (16, 32, 32, 3)
  assert batch['image'].sharding == sharding
  assert len(batch['image'].addressable_shards) == jax.device_count() == 8
  with pytest.raises(ConfigError, match='not divisible'):
    pipeline.local_batch_size(10, process_count=4)


# --- Preprocessing -------------------------------------------------------------

@pytest.mark.parametrize('sampler', ['tensorflow', 'uniform_area'])
def test_distorted_crop_respects_area_and_aspect(sampler):
  opts = preprocess.Options(image_size=32, crop_sampler=sampler)
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = preprocess.sample_crop(rng, 375, 500, opts)
    assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
    assert 0.04 <= h * w / (375 * 500) <= 1.0
    if (h, w) != (375, 500):
      assert 0.7 <= w / h <= 1.4
  # No attempt fits (a 1×50 strip): TensorFlow's sampler takes the whole
  # image, the uniform one a central crop in the aspect range.
  box = preprocess.sample_crop(np.random.default_rng(0), 1, 50, opts)
  assert box == ((0, 0, 1, 50) if sampler == 'tensorflow' else (0, 24, 1, 1))


def test_bad_preprocessing_options_are_clear_errors():
  with pytest.raises(ConfigError, match="crop_sampler must be one of"):
    preprocess.Options(image_size=32, crop_sampler='random')
  with pytest.raises(ConfigError, match="color_distort must be one of"):
    preprocess.Options(image_size=32, color_distort=True)


def test_eval_takes_the_central_87_5_percent():
  image = np.zeros((80, 160, 3), np.uint8)
  image[5:75, 10:150] = 255                      # exactly the central 87.5%
  out = preprocess.eval_image(image, preprocess.Options(image_size=16))
  np.testing.assert_allclose(out, 1.0)
  assert preprocess.central_crop(80, 160, 0.875) == (5, 10, 70, 140)


def test_jpeg_draft_decoding_matches_full_decoding():
  rng = np.random.default_rng(0)
  image = synthetic.render(3, 400, rng)
  data = io.BytesIO()
  Image.fromarray(image).save(data, format='JPEG', quality=95)
  fast = preprocess.eval_image(data.getvalue(), preprocess.Options(image_size=64))
  slow = preprocess.eval_image(image, preprocess.Options(image_size=64))
  assert np.abs(fast - slow).mean() < 0.05


def test_color_distortion_changes_colours_within_range():
  x = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
  y = preprocess.distort_color(x, np.random.default_rng(1))
  assert y.min() >= 0 and y.max() <= 1 and not np.allclose(x, y)


# --- Sources -------------------------------------------------------------------

def test_synthetic_is_deterministic_and_class_decides_content():
  src = synthetic.SyntheticSource(num_examples=50, num_classes=24, image_size=40)
  np.testing.assert_array_equal(src[7]['image'], src[7]['image'])
  assert not np.array_equal(src[7]['image'], src[8]['image'])
  other = synthetic.SyntheticSource(num_examples=50, num_classes=24, image_size=40,
                                    split='validation')
  assert not np.array_equal(src[7]['image'], other[7]['image'])
  parts = {synthetic.class_parts(c) for c in range(synthetic.MAX_CLASSES)}
  assert len(parts) == synthetic.MAX_CLASSES          # every class is distinct
  assert src[3]['image'].shape == (40, 40, 3)
  with pytest.raises(ValueError, match='2 to 48 classes'):
    synthetic.SyntheticSource(num_examples=5, num_classes=49, image_size=40)


@pytest.mark.parametrize('radius', [0.2, 0.4])
def test_synthetic_object_size_is_the_radius_over_the_image_size(radius):
  """A disk drawn with radius r × size covers π r² of the image: the pixels
  that change when the same draw is made with a dot-sized disk instead (the
  random draws are the same, only the radius differs)."""
  size, disk = 120, 0     # class 0: one solid disk
  assert synthetic.class_parts(disk) == ('disk', 'solid', 1)
  draw = lambda r: synthetic.render(disk, size, np.random.default_rng(3), (r, r))
  changed = np.any(draw(radius) != draw(0.05), axis=-1).mean()
  assert changed == pytest.approx(np.pi * radius**2, rel=0.1)
  with pytest.raises(ValueError, match='object_size'):
    synthetic.SyntheticSource(num_examples=5, num_classes=10, image_size=40,
                              object_size=(0.3, 0.5))


def _write(path, array, fmt, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(array)
  if mode:
    img = img.convert(mode)
  img.save(path, format=fmt)


def _image_tree(root, corrupt=False):
  rng = np.random.default_rng(0)
  modes = [None, 'L', 'RGBA', 'P', 'CMYK']
  for split, n in (('train', 5), ('validation', 2)):
    for c, name in enumerate(('cat', 'dog')):
      for i in range(n):
        mode = modes[(i + c) % len(modes)]
        # JPEG takes RGB, L and CMYK; PNG takes RGB, L, RGBA and P.
        fmt = 'JPEG' if mode == 'CMYK' or (i % 2 == 0 and mode not in ('RGBA', 'P')) else 'PNG'
        ext = '.jpg' if fmt == 'JPEG' else '.png'
        _write(os.path.join(root, split, name, f'{i}{ext}'),
               rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8), fmt, mode)
  if corrupt:
    with open(os.path.join(root, 'train', 'dog', 'broken.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff\xe0 this is not a jpeg')


def test_eval_exclude_leaves_named_validation_images_out(tmp_path):
  """data.eval_exclude: names as CLASS/FILE or FILE; training is untouched;
  a missing file or an empty result is one clear error."""
  _image_tree(str(tmp_path))
  listing = tmp_path / 'exclude.txt'
  listing.write_text('cat/0.jpg\n1.png  # both classes have one\nnot_there.jpg\n')
  cfg = data_cfg(name='folder', path=str(tmp_path), eval_exclude=str(listing))
  validation = sources.make_source(cfg, 'validation')
  assert sources.make_source(data_cfg(name='folder', path=str(tmp_path)),
                             'validation').names() == ['cat/0.jpg', 'cat/1.png',
                                                       'dog/0.jpg', 'dog/1.png']
  assert validation.names() == ['dog/0.jpg'] and len(validation) == 1
  assert validation[0]['where'].endswith('dog/0.jpg')
  assert len(sources.make_source(cfg, 'train')) == 10
  cfg.eval_exclude = str(tmp_path / 'missing.txt')
  with pytest.raises(ConfigError, match='cannot read the exclusion file .*missing.txt'):
    sources.make_source(cfg, 'validation')
  listing.write_text('cat/0.jpg\n1.png\ndog/0.jpg\n')
  cfg.eval_exclude = str(listing)
  with pytest.raises(ConfigError, match='leaves no example'):
    sources.make_source(cfg, 'validation')


def test_folder_source_reads_png_and_jpeg_in_any_mode(tmp_path):
  _image_tree(str(tmp_path))
  cfg = data_cfg(name='folder', path=str(tmp_path))
  train = sources.make_source(cfg, 'train')
  assert train.classes == ['cat', 'dog'] and train.num_classes == 2 and len(train) == 10
  assert train.class_names() == ['cat', 'dog']
  ds, n = pipeline.eval_dataset(sources.make_source(cfg, 'validation'), cfg, local_batch=3)
  batches = list(ds)
  assert sum(b['mask'].sum() for b in batches) == 4
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert sorted(labels.tolist()) == [0, 0, 1, 1]
  batch = take(pipeline.train_dataset(train, cfg, seed=0, local_batch=10), 1)[0]
  assert batch['image'].shape == (10, 32, 32, 3) and np.isfinite(batch['image']).all()


def test_folder_corrupt_image_is_a_clear_error_naming_the_file(tmp_path):
  _image_tree(str(tmp_path), corrupt=True)
  cfg = data_cfg(name='folder', path=str(tmp_path))
  src = sources.make_source(cfg, 'train')
  broken = [i for i, (p, _) in enumerate(src.files) if 'broken' in p][0]
  with pytest.raises(preprocess.CorruptImageError, match='broken.jpg'):
    preprocess.train_image(src[broken]['image'], np.random.default_rng(0),
                           pipeline.options(cfg), src[broken]['where'])
  ds = pipeline.eval_dataset(src, cfg, local_batch=4)[0]
  with pytest.raises(Exception, match='broken.jpg'):
    list(ds)


def test_folder_skip_corrupt_skips_and_counts(tmp_path, caplog):
  _image_tree(str(tmp_path), corrupt=True)
  cfg = data_cfg(name='folder', path=str(tmp_path), skip_corrupt=True)
  src = sources.make_source(cfg, 'train')
  assert len(src) == 11
  skipped, eval_skipped = pipeline.SkipCounter(), pipeline.SkipCounter()
  with caplog.at_level('WARNING'):
    batches = take(pipeline.train_dataset(src, cfg, seed=0, local_batch=5,
                                          skipped=skipped), 2)
    ds, _ = pipeline.eval_dataset(src, cfg, local_batch=4, skipped=skipped)
    seen = sum(int(b['mask'].sum()) for b in ds)
    ds, _ = pipeline.eval_dataset(src, cfg, local_batch=4, skipped=eval_skipped)
    list(ds)
  assert seen == 10                                     # the broken one is masked
  assert sorted(np.concatenate([b['index'] for b in batches]).tolist()) == sorted(
      i for i, (p, _) in enumerate(src.files) if 'broken' not in p)
  assert skipped.count == 2                   # once in train, once in eval
  assert eval_skipped.count == 1              # each counter counts its own datasets
  assert pickle.loads(pickle.dumps(skipped)).count == 2   # travels to Grain workers
  assert 'broken.jpg' in caplog.text and 'skipped corrupt image' in caplog.text


def test_evaluation_with_every_image_skipped_is_a_clear_error(tmp_path):
  """data.skip_corrupt and no validation image that decodes: evaluation stops
  with one clear error (no division by zero), naming the folder."""
  from inception_jax import parallel, train, trainstate
  _image_tree(str(tmp_path))
  for name in ('cat', 'dog'):
    for image in os.listdir(tmp_path / 'validation' / name):
      (tmp_path / 'validation' / name / image).write_bytes(b'not an image')
  config = config_lib.load('configs/inception_v3.py:scale=tiny', {
      'data.name': 'folder', 'data.path': str(tmp_path), 'data.skip_corrupt': True,
      'batch_size': 8})
  data = train._Data(config, parallel.data_mesh())
  sums = jax.jit(lambda state, batch, totals: {
      key: totals[key] + batch['mask'].sum() for key in train.EVAL_SUMS})
  loop = train._Loop(config, data, None, None, None, None, None, train_step=None, seed=0,
                     eval_step=sums)
  state = trainstate.TrainState(*[{'w': np.zeros((), np.float32)}] * 6)
  with pytest.raises(UserError, match=f'every evaluation image in {tmp_path}/validation '
                                      f'failed to decode \\(all 4 skipped'):
    loop.evaluate(state)
  data.loader.close()


def test_folder_missing_or_empty_path_is_a_clear_error(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    sources.make_source(data_cfg(name='folder', path=str(tmp_path / 'nope')), 'train')
  with pytest.raises(ConfigError, match='needs data.path'):
    sources.make_source(data_cfg(name='folder', path=''), 'train')
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(ConfigError, match='holds no .jpg'):
    sources.make_source(data_cfg(name='folder', path=str(tmp_path)), 'train')
  with pytest.raises(ConfigError, match="data.name must be"):
    sources.make_source(data_cfg(name='imagenet'), 'train')


def test_tfds_array_record_dataset_through_the_pipeline(tmp_path):
  import tensorflow_datasets as tfds

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic shapes stored as JPEGs in ArrayRecord files."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, supervised_keys=('image', 'label'),
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=4),
              'file_name': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(24, 'train'),
              'validation': self._generate_examples(11, 'validation')}

    def _generate_examples(self, n, split):
      src = synthetic.SyntheticSource(num_examples=n, num_classes=4,
                                      image_size=48, split=split)
      for i in range(n):         # named as ImageNet's validation images
        yield i, {**src[i], 'file_name': f'ILSVRC2012_val_{i + 1:08d}.JPEG'}

  TinyShapes(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  assert any(f.endswith(tuple(f'.array_record-0000{i}-of-00001' for i in range(1)))
             for _, _, fs in os.walk(tmp_path) for f in fs)
  cfg = data_cfg(name='tfds:tiny_shapes', data_dir=str(tmp_path))
  train = sources.make_source(cfg, 'train')
  assert len(train) == 24 and train.num_classes == 4
  assert train.class_names() == ['0', '1', '2', '3']       # ClassLabel's names
  assert isinstance(train[0]['image'], bytes)             # decoded by our pipeline
  batch = take(pipeline.train_dataset(train, cfg, seed=0, local_batch=8), 1)[0]
  assert batch['image'].shape == (8, 32, 32, 3)
  ds, _ = pipeline.eval_dataset(sources.make_source(cfg, 'validation'), cfg, local_batch=4)
  assert sorted(i for b in ds for i in b['index'][b['mask'] > 0]) == list(range(11))
  # data.eval_exclude, in the ILSVRC 2014 blacklist's form (numbers) or by name.
  exclude = tmp_path / 'blacklist.txt'
  exclude.write_text('3\n# a comment\n\nILSVRC2012_val_00000005.JPEG\n12\n')
  validation = sources.make_source(
      data_cfg(name='tfds:tiny_shapes', data_dir=str(tmp_path), eval_exclude=str(exclude)),
      'validation')
  assert len(validation) == 9 and sorted(validation.names()) == [
      f'ILSVRC2012_val_{n:08d}.JPEG' for n in (1, 2, 4, 6, 7, 8, 9, 10, 11)]
  assert validation[0]['label'] in range(4)
  with pytest.raises(UserError, match='not prepared.*inception_jax prepare tiny_shapes'):
    sources.make_source(data_cfg(name='tfds:tiny_shapes', data_dir=str(tmp_path / 'x')),
                        'train')


def test_synthetic_needs_a_convnet_not_a_linear_model():
  """Hard enough that a linear model on pixels stays near chance, easy enough
  that a three-layer convnet learns it in a few hundred steps."""
  import jax.numpy as jnp
  import optax
  from flax import nnx
  size, classes = 24, 10

  def load(split, n):
    src = synthetic.SyntheticSource(num_examples=n, num_classes=classes,
                                    image_size=round(size / 0.875), split=split)
    opts = preprocess.Options(image_size=size)
    return (np.stack([preprocess.eval_image(src[i]['image'], opts) for i in range(n)]),
            np.array([src[i]['label'] for i in range(n)]))
  (x_train, y_train), (x_test, y_test) = load('train', 2000), load('validation', 500)

  class Linear(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(size * size * 3, classes, rngs=rngs)

    def __call__(self, x):
      return self.dense(x.reshape(x.shape[0], -1))

  class ConvNet(nnx.Module):
    def __init__(self, rngs):
      self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
      self.c2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
      self.c3 = nnx.Conv(32, 32, (3, 3), rngs=rngs)
      self.dense = nnx.Linear(32, classes, rngs=rngs)

    def __call__(self, x):
      x = nnx.max_pool(jax.nn.relu(self.c1(x)), (2, 2), (2, 2))
      x = nnx.max_pool(jax.nn.relu(self.c2(x)), (2, 2), (2, 2))
      return self.dense(jax.nn.relu(self.c3(x)).max(axis=(1, 2)))

  def accuracy(model, steps=400):
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    # 400 steps: compiled to run fast, not to compile fast (tests/helpers.py).
    @functools.partial(jax.jit, compiler_options=RUN_FAST)
    def step(state, x, y):
      model, opt = nnx.merge(graphdef, state)
      loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
      opt.update(model, nnx.grad(loss)(model))
      return nnx.state((model, opt))

    rng = np.random.default_rng(0)
    for _ in range(steps):
      idx = rng.integers(0, len(x_train), 64)
      state = step(state, x_train[idx], y_train[idx])
    model, _ = nnx.merge(graphdef, state)
    predict = nnx.jit(lambda m, x: m(x).argmax(-1))
    return float(jnp.mean(predict(model, x_test) == y_test))

  linear, conv = accuracy(Linear(nnx.Rngs(0))), accuracy(ConvNet(nnx.Rngs(0)))
  assert linear < 0.3 and conv > 0.7, (linear, conv)


# --- Multi-crop evaluation -------------------------------------------------------

def test_multi_crops_follow_the_144_crop_protocol():
  """A 256×320 image at 224 (the protocol's own sizes, so that its first
  scale needs no resize): the 12 views are the central square's 4 corners,
  centre and whole, each then mirrored; they are the 144's views of that
  square at that scale; one view is training's central evaluation crop."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
  opts = preprocess.Options(image_size=224)
  twelve = preprocess.multi_crops(image, opts, 12)
  all_144 = preprocess.multi_crops(image, opts, 144)
  assert twelve.shape == (12, 224, 224, 3) and all_144.shape == (144, 224, 224, 3)
  square = image[:, 32:288]                    # the central 256×256 of the 320 width
  expected = [square[:224, :224], square[:224, 32:], square[32:, :224], square[32:, 32:],
              square[16:240, 16:240]]
  for k, view in enumerate(expected):
    np.testing.assert_array_equal(twelve[2 * k], preprocess.to_unit_range(view))
  np.testing.assert_allclose(
      twelve[10], preprocess.to_unit_range(cv2.resize(square, (224, 224))), atol=1e-6)
  np.testing.assert_array_equal(twelve[1::2], twelve[0::2, :, ::-1])       # mirrors
  np.testing.assert_array_equal(all_144[12:24], twelve)   # scale 1, square 2 of 3
  # The left square of the first scale; the last scale's shorter side is 352.
  np.testing.assert_array_equal(all_144[0], preprocess.to_unit_range(image[:224, :224]))
  np.testing.assert_array_equal(
      preprocess.multi_crops(image, opts, 1)[0], preprocess.eval_image(image, opts))
  portrait = preprocess.multi_crops(image.transpose(1, 0, 2), opts, 12)
  np.testing.assert_array_equal(
      portrait[0], preprocess.to_unit_range(square.transpose(1, 0, 2)[:224, :224]))
  with pytest.raises(ConfigError, match='crops must be one of'):
    preprocess.multi_crops(image, opts, 10)
