"""The model zoo: every preset and option builds, runs forward and backward;
shapes, widths and errors follow the paper and the released code."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY
from flax import nnx

from inception_jax import blocks, config_lib, layers, losses, models, rundir
from inception_jax.errors import ConfigError

VARIANTS = [
    ('inception_v3', {}),
    ('inception_v2', {}),
    ('inception_v2_factorized_7x7', {}),
    ('inception_v3_rf151', {}),
    ('inception_v3_rf79', {}),
    ('inception_v3', dict(grid_reduction='pool_conv')),
    ('inception_v3', dict(grid_reduction='conv_pool')),
    ('inception_v3', dict(inception_a='figure5')),
    ('inception_v3', dict(factorized_activation='linear')),
    ('inception_v3', dict(factorization_n=3)),
    ('inception_v3', dict(aux_head=False, num_classes=7)),
    ('inception_v3', dict(dtype='bfloat16')),
    ('inception_v3', dict(width_multiplier=0.1, min_depth=16)),
]


def _loss_and_grads(model, x, labels):
  """One functional train-mode step: loss, grads, and updated BN statistics."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, rest, x, key):
    m = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = m(x, return_aux=True, rngs=key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if aux is not None:
      loss += 0.4 * optax.softmax_cross_entropy_with_integer_labels(aux, labels).mean()
    return loss, (logits, aux, nnx.state(m, nnx.BatchStat))

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  return grad_fn(params, rest, x, jax.random.key(1))


@pytest.mark.parametrize('preset,options', VARIANTS,
                         ids=[f'{p}-{"-".join(f"{k}={v}" for k, v in o.items()) or "default"}'
                              for p, o in VARIANTS])
def test_every_variant_trains(tiny_spec, preset, options):
  spec = tiny_spec(preset, **options)
  size = 75
  model = models.Inception(spec, image_size=size, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4, size, size, 3))
  labels = jnp.arange(4) % spec.num_classes
  bn_before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  (loss, (logits, aux, bn_after)), grads = _loss_and_grads(model, x, labels)

  assert logits.shape == (4, spec.num_classes) and logits.dtype == jnp.float32
  assert (aux is None) == (not spec.aux_head)
  if aux is not None:
    assert aux.shape == (4, spec.num_classes)
  assert np.isfinite(float(loss))
  # Every weight of the network takes part: each gets a non-zero gradient.
  flat = nnx.to_flat_state(grads)
  dead = [path for path, g in flat if not np.any(np.asarray(g.get_value()))]
  assert not dead, f'parameters without gradient: {dead[:5]}'
  # Parameters stay float32 whatever the compute dtype.
  assert {g.get_value().dtype for _, g in flat} == {jnp.dtype('float32')}
  # Train mode moves the BatchNorm statistics.
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), bn_before, bn_after)
  assert all(jax.tree.leaves(moved))

  if not options:
    # Eval mode (every variant's dropout is the same layer) is deterministic
    # and needs no dropout key.
    model.eval()
    forward = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_full_size_v3_grid_is_8x8x2048():
  spec = models.preset('inception_v3')
  model = nnx.eval_shape(lambda: models.Inception(spec, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    grid, aux = m.features(x, return_aux=True)
    return grid, aux, m(x)
  grid, aux, logits = jax.eval_shape(run, state, x)
  assert grid.shape == (2, 8, 8, 2048)
  assert aux.shape == logits.shape == (2, 1000)


def test_endpoints_follow_tf_slim():
  spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4)
  model = models.Inception(spec, image_size=75, rngs=nnx.Rngs(0))
  assert model.block_names == ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
                               'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                               'Mixed_7a', 'Mixed_7b', 'Mixed_7c')
  assert model.stem.layer_names == ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3',
                                    'MaxPool_3a_3x3', 'Conv2d_3b_1x1',
                                    'Conv2d_4a_3x3', 'MaxPool_5a_3x3')
  convs = [l for l in layers.iter_layers(model) if isinstance(l, layers.ConvBN)]
  assert len(convs) == 94 + 2   # backbone + the aux head's two convolutions (§2.10)


def _widths(spec, size=299):
  model = nnx.eval_shape(lambda: models.Inception(spec, image_size=size, rngs=nnx.Rngs(0)))
  return model, {n: getattr(model, n).out_features for n in model.block_names}


def test_released_filter_counts():
  model, widths = _widths(models.preset('inception_v3'))
  assert widths == dict(Mixed_5b=256, Mixed_5c=288, Mixed_5d=288, Mixed_6a=768,
                        Mixed_6b=768, Mixed_6c=768, Mixed_6d=768, Mixed_6e=768,
                        Mixed_7a=1280, Mixed_7b=2048, Mixed_7c=2048)
  # Fig. 6: 1×7 then 7×1 with the c7 width of the released code.
  b = model.Mixed_6c.branch_nxn
  assert [l.kernel_size for l in b.sublayers()] == [(1, 1), (1, 7), (7, 1)]
  assert [l.out_features for l in b.sublayers()] == [160, 160, 192]
  # Fig. 7: the expanded bank's fork.
  fork = model.Mixed_7b.branch_3x3dbl.fork
  assert [l.kernel_size for l in fork.sublayers()] == [(1, 3), (3, 1)]


def test_modules_per_grid_drops_or_repeats_the_grids_modules():
  """Table 1 as printed (five 17×17 modules) adds a copy of Mixed_6e, the
  aux head moving onto it; one module per grid keeps each grid's first."""
  released, widths = _widths(models.preset('inception_v3'))
  printed, printed_widths = _widths(models.preset('inception_v3', modules_per_grid=(3, 5, 2)))
  assert printed.block_names == released.block_names[:8] + ('Mixed_6f',) + released.block_names[8:]
  assert printed_widths == dict(widths, Mixed_6f=768)
  assert printed.aux_endpoint == 'Mixed_6f' and released.aux_endpoint == 'Mixed_6e'
  count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
  assert count(printed) == count(released) + count(released.Mixed_6e)
  assert count(printed.Mixed_6f.branch_nxn) == count(released.Mixed_6e.branch_nxn)

  shallow, shallow_widths = _widths(models.preset('inception_v3', modules_per_grid=(1, 1, 1)))
  assert shallow.block_names == ('Mixed_5b', 'Mixed_6a', 'Mixed_6b', 'Mixed_7a', 'Mixed_7b')
  assert shallow.aux_endpoint == 'Mixed_6b'
  # Fig. 10's pooling branch passes its input on: 256 + 384 + 96 channels.
  assert shallow_widths == dict({n: widths[n] for n in shallow.block_names}, Mixed_6a=736)
  first = next(l for l in layers.iter_layers(shallow.Mixed_6a) if isinstance(l, layers.ConvBN))
  assert first.conv.kernel.get_value().shape[2] == widths['Mixed_5b']    # 256, not 288
  assert shallow.grid_size(299) == 8 and shallow.min_image_size == released.min_image_size

  # From the command line, and a run recorded before the option: as released.
  config = config_lib.load('configs/inception_v3.py', ['model.modules_per_grid=(3,5,2)'])
  assert models.InceptionSpec.from_config(config.model).modules_per_grid == (3, 5, 2)
  old = config.to_dict()
  old.pop('config_version', None)            # recorded before config versions
  del old['model']['modules_per_grid']
  assert rundir.as_current(old)['model']['modules_per_grid'] == list(models.RELEASED_MODULES)
  for bad in ((0, 4, 2), (3, 4), 'many', (3, 21, 2)):
    with pytest.raises(ConfigError, match=r'modules_per_grid must be three counts from 1 to 20'):
      models.preset('inception_v3', modules_per_grid=bad)


def test_width_multiplier_follows_tf_slim_depth():
  # depth(d) = max(int(d * multiplier), min_depth)
  _, widths = _widths(models.preset('inception_v3', width_multiplier=0.5, min_depth=16))
  assert widths['Mixed_5b'] == 32 + 32 + 48 + 16
  _, widths = _widths(models.preset('inception_v3', width_multiplier=0.1, min_depth=16))
  assert widths['Mixed_5b'] == 16 + 16 + 16 + 16   # 6, 6, 9, 3 → min_depth


def test_options_change_the_right_layers():
  base, _ = _widths(models.preset('inception_v3'))
  fig5, _ = _widths(models.preset('inception_v3', inception_a='figure5'))
  assert base.Mixed_5b.branch_5x5.sublayers()[1].kernel_size == (5, 5)
  assert fig5.Mixed_5b.branch_5x5.sublayers()[1].kernel_size == (3, 3)

  linear, _ = _widths(models.preset('inception_v3', factorized_activation='linear'))
  acts = [l.activation for l in layers.iter_layers(linear) if isinstance(l, layers.ConvBN)]
  # First layer of each factorized pair: 1 per Fig. 5 block (×3), 3 per
  # Fig. 6 block (×4) — 1×7 before 7×1 and both 7×1 of the double branch —
  # and 1 in Mixed_7a.
  assert acts.count('linear') == 3 + 12 + 1

  n3, _ = _widths(models.preset('inception_v3', factorization_n=3))
  assert n3.Mixed_6b.branch_nxn.sublayers()[1].kernel_size == (1, 3)

  v2, _ = _widths(models.preset('inception_v2'))
  assert v2.stem.layer_names[0] == 'Conv2d_1a_7x7'
  assert v2.stem.Conv2d_1a_7x7.out_size(299) == 147
  assert v2.stem.Conv2d_1a_7x7.out_features == 64
  assert v2.AuxLogits.tower.Conv2d_2a_5x5.bn is None        # v2: aux FC without BN
  assert base.AuxLogits.tower.Conv2d_2a_5x5.bn is not None  # v3: BN-auxiliary

  for style in ('pool_conv', 'conv_pool'):
    naive, widths = _widths(models.preset('inception_v3', grid_reduction=style))
    assert widths['Mixed_6a'] == 768 and widths['Mixed_7a'] == 1280
    assert naive.grid_size(299) == 8


@pytest.mark.parametrize('preset,size,grid', [
    ('inception_v3', 299, 8), ('inception_v2', 299, 8),
    ('inception_v3_rf151', 151, 8), ('inception_v3_rf79', 79, 8)])
def test_table2_stems_reach_the_same_grids(preset, size, grid):
  model, _ = _widths(models.preset(preset), size)
  assert model.grid_size(size, until='Mixed_5d') == 35
  assert model.grid_size(size, until='Mixed_6e') == 17
  assert model.grid_size(size) == grid


def test_too_small_input_is_a_clear_error():
  spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4)
  assert models.min_image_size(spec) == 75
  with pytest.raises(models.ImageSizeError, match='minimum is 75×75'):
    models.Inception(spec, image_size=74, rngs=nnx.Rngs(0))
  model = models.Inception(spec, image_size=75, rngs=nnx.Rngs(0))
  model.eval()
  assert nnx.eval_shape(lambda m: m(jnp.zeros((1, 75, 75, 3))), model).shape == (1, 1000)
  with pytest.raises(models.ImageSizeError, match='minimum is 75×75'):
    model(jnp.zeros((1, 60, 60, 3)))
  assert models.min_image_size(models.preset('inception_v3_rf79')) < 79
  assert models.min_image_size(models.preset('inception_v3_rf151')) < 151


@pytest.mark.parametrize('stem,minimum', [
    ('factorized', 75), ('7x7', 75), ('rf151', 39), ('rf79', 23)])
@pytest.mark.parametrize('grid_reduction', models.GRID_REDUCTIONS)
def test_min_image_size_is_the_smallest_input_with_a_grid(stem, minimum,
                                                         grid_reduction):
  spec = models.preset('inception_v3', stem=stem, grid_reduction=grid_reduction,
                       width_multiplier=1e-3, min_depth=1, aux_head=False)
  model = nnx.eval_shape(lambda: models.Inception(spec, rngs=nnx.Rngs(0)))
  assert model.min_image_size == minimum
  # The bisection agrees with trying every size in turn.
  assert next(s for s in range(1, 4096) if model.grid_size(s) >= 1) == minimum


def test_smallest_input_bisects_any_monotone_grid():
  for minimum in (1, 2, 3, 75, 1000, 4097):
    probes = []
    def grid(size, minimum=minimum):
      probes.append(size)
      return max(0, (size - minimum) // 32 + 1)
    assert models._smallest_input(grid) == minimum
    assert len(probes) <= 2 * minimum.bit_length() + 1
  with pytest.raises(models.ImageSizeError, match='no input'):
    models._smallest_input(lambda size: 0, limit=64)


def test_bad_options_are_clear_errors():
  with pytest.raises(ConfigError, match="unknown model option.*'colour'"):
    models.InceptionSpec.from_config(dict(colour='red'))
  with pytest.raises(ConfigError, match='stem'):
    models.preset('inception_v3', stem='5x5')
  with pytest.raises(ConfigError, match="unknown block 'nope'"):
    models.preset('inception_v3', blocks=dict(models.DEFAULT_BLOCKS, grid_17='nope'))
  with pytest.raises(ConfigError, match='preset'):
    models.preset('inception_v9')
  with pytest.raises(ConfigError, match='dropout_rate'):
    models.preset('inception_v3', dropout_rate=1.5)


def test_avg_pool_excludes_padding_like_tensorflow():
  x = jnp.ones((1, 5, 5, 1))
  np.testing.assert_allclose(layers.avg_pool(x, 3), x)   # corners too
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  # Top-left window holds 0, 1, 3, 4 (and five padded zeros that do not count).
  assert float(layers.avg_pool(x, 3)[0, 0, 0, 0]) == pytest.approx(2.0)


def test_avg_pool_include_pad_counts_padding_like_pytorch():
  """SAME 3×3 average pooling of ones divides by 9 with `include_pad`: a
  corner is 4/9, an edge 6/9, the inside 1."""
  pooled = np.asarray(layers.Pool('avg', 3, 1, 'SAME', 1, include_pad=True)(
      jnp.ones((1, 4, 4, 1))))[0, :, :, 0]
  np.testing.assert_allclose(pooled[0, 0], 4 / 9, rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 1], 6 / 9, rtol=1e-6)
  np.testing.assert_allclose(pooled[1, 1], 1.0, rtol=1e-6)


def test_convbn_is_conv_bn_without_scale_then_relu():
  layer = layers.ConvBN(3, 4, 3, rngs=nnx.Rngs(0))
  assert layer.conv.bias is None and layer.bn.scale is None
  assert layer.bn.epsilon == 1e-3 and layer.bn.momentum == 0.9997
  layer.bn.mean.set_value(jnp.full((4,), 0.5))
  layer.bn.var.set_value(jnp.full((4,), 4.0))
  layer.bn.bias.set_value(jnp.array([0.0, -1.0, 1.0, 0.0]))
  layer.eval()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  conv = jax.lax.conv_general_dilated(x, layer.conv.kernel.get_value(), (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = jax.nn.relu((conv - 0.5) / jnp.sqrt(4.0 + 1e-3) + layer.bn.bias.get_value())
  np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
  linear = layers.ConvBN(3, 4, 3, activation='linear', rngs=nnx.Rngs(0))
  linear.eval()
  assert float(jnp.min(linear(x))) < 0
  # bn_scale (torchvision's port): γ multiplies the normalized value.
  scaled = layers.ConvBN(3, 4, 3, bn_scale=True, rngs=nnx.Rngs(0))
  nnx.update(scaled, nnx.state(layer))          # the same kernel, offset and statistics
  scaled.bn.scale.set_value(jnp.array([1.0, 2.0, 0.5, -1.0]))
  scaled.eval()
  gamma = scaled.bn.scale.get_value()
  expected = jax.nn.relu(gamma * (conv - 0.5) / jnp.sqrt(4.0 + 1e-3) + layer.bn.bias.get_value())
  np.testing.assert_allclose(scaled(x), expected, rtol=1e-5, atol=1e-5)


def test_registered_block_is_selected_from_the_config():
  @blocks.register('test_plain_17')
  def plain(in_features, *, b, mid_features):
    """A 17×17 'block' that is a single 3×3 ConvBN."""
    return b.tower(in_features, layers.conv(mid_features, 3))

  try:
    spec = models.InceptionSpec.from_config(dict(
        TINY, blocks=dict(models.DEFAULT_BLOCKS, grid_17='test_plain_17')))
    model = models.Inception(spec, image_size=75, rngs=nnx.Rngs(0))
    assert model.Mixed_6b.layer_names == ('Conv2d_0a_3x3',)
    x = jax.random.normal(jax.random.key(0), (2, 75, 75, 3))
    (loss, _), grads = _loss_and_grads(model, x, jnp.array([0, 1]))
    assert np.isfinite(float(loss))
    kernel = grads['Mixed_6b']['Conv2d_0a_3x3']['conv']['kernel'].get_value()
    assert kernel.shape[:2] == (3, 3) and np.any(np.asarray(kernel))
  finally:
    del blocks.BLOCKS['test_plain_17']


def test_registering_a_name_again_replaces_it_with_a_warning():
  # A notebook cell run twice defines the block anew under the same name.
  def make_block(kernel):
    def block(in_features, *, b, mid_features):
      return b.tower(in_features, layers.conv(mid_features, kernel))
    return block

  first, second = make_block(3), make_block(1)
  try:
    blocks.register('test_twice_17')(first)
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      blocks.register('test_twice_17')(first)         # the same object: silent
    with pytest.warns(UserWarning, match="block 'test_twice_17'.*replaced"):
      blocks.register('test_twice_17')(second)
    assert blocks.get_block('test_twice_17') is second
    spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4,
                         blocks=dict(models.DEFAULT_BLOCKS, grid_17='test_twice_17'))
    model = nnx.eval_shape(lambda: models.Inception(spec, image_size=75,
                                                    rngs=nnx.Rngs(0)))
    assert model.Mixed_6c.layer_names == ('Conv2d_0a_1x1',)   # the second one
  finally:
    del blocks.BLOCKS['test_twice_17']

  try:
    blocks.register_stem('test_stem', 299)(blocks.factorized_stem)
    with pytest.warns(UserWarning, match="stem 'test_stem'.*replaced"):
      blocks.register_stem('test_stem', 151)(blocks.stem_rf151)
    assert blocks.STEMS['test_stem'] is blocks.stem_rf151
    assert blocks.STEM_IMAGE_SIZE['test_stem'] == 151
  finally:
    del blocks.STEMS['test_stem'], blocks.STEM_IMAGE_SIZE['test_stem']


def test_bfloat16_computes_in_bfloat16():
  spec = models.preset('inception_v3', **TINY, dtype='bfloat16')
  model = models.Inception(spec, image_size=75, rngs=nnx.Rngs(0))
  model.eval()
  grid, _ = model.features(jnp.zeros((1, 75, 75, 3)))
  assert grid.dtype == jnp.bfloat16
  params = nnx.state(model, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}


@pytest.mark.parametrize('backend, expected', [('cpu', jnp.float32), ('gpu', jnp.bfloat16),
                                               ('tpu', jnp.bfloat16)])
def test_auto_dtype_is_bfloat16_on_accelerators_only(monkeypatch, backend, expected):
  """`dtype='auto'` (paper scale): bfloat16 compute on a GPU or TPU, float32 on
  a CPU; the network built on this CPU computes in float32."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert models.compute_dtype('auto') == expected
  spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4, dtype='auto')
  model = nnx.eval_shape(lambda: models.Inception(spec, image_size=75, rngs=nnx.Rngs(0)))
  assert model.dtype == expected


def test_float64_is_float64_throughout():
  """`dtype='float64'` (the dtype of the tests that compare device counts):
  parameters, BatchNorm statistics, both heads' logits, the loss and the
  gradients in float64, so no float32 rounding hides anywhere in the step.
  Dtypes need no numbers: the step is traced with shapes only."""
  with jax.enable_x64(True):
    spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4,
                         dtype='float64')
    model = nnx.eval_shape(lambda: models.Inception(spec, image_size=75, rngs=nnx.Rngs(0)))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model))} == {jnp.dtype('float64')}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, labels = jnp.zeros((2, 75, 75, 3), jnp.float32), jnp.array([0, 1])

    def loss_fn(params, rest):
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits, aux = model(x, return_aux=True, rngs=jax.random.key(0))
      return losses.inception_loss(logits, aux, labels)[0], (logits, aux)
    (total, (logits, aux)), grads = jax.eval_shape(
        jax.value_and_grad(loss_fn, has_aux=True), params, rest)
    assert logits.dtype == aux.dtype == total.dtype == jnp.float64
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype('float64')}


def test_ghost_batch_norm_normalizes_each_group_alone():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 3 + 1
  ghost = layers.BatchNorm(4, group_size=2, momentum=0.5)
  whole = layers.BatchNorm(4, momentum=0.5)
  y = ghost(x)
  for g in range(4):
    part = layers.BatchNorm(4, momentum=0.5)
    np.testing.assert_allclose(y[2 * g:2 * g + 2], part(x[2 * g:2 * g + 2]),
                               rtol=1e-5, atol=1e-5)
  assert not np.allclose(y, whole(x), atol=1e-3)
  # Moving averages take the mean of the group statistics.
  group_means = x.reshape(4, 2, 3, 3, 4).mean(axis=(1, 2, 3)).mean(0)
  np.testing.assert_allclose(ghost.mean[...], 0.5 * group_means, rtol=1e-5)
  with pytest.raises(ValueError, match='multiple of bn_group_size'):
    layers.BatchNorm(4, group_size=3)(x)
  # A group as large as the batch is plain BatchNorm; eval uses the averages.
  np.testing.assert_allclose(layers.BatchNorm(4, group_size=8)(x), whole(x), atol=1e-6)
  whole.eval()
  expected = (x - whole.mean[...]) / np.sqrt(whole.var[...] + 1e-3)
  np.testing.assert_allclose(whole(x), expected, rtol=1e-5, atol=1e-5)
