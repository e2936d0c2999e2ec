"""`model.conv_impl`: XLA's convolution and the CPU's matrix-product forms give
the same values and gradients up to float32 rounding, per layer, per network
and over a short training run; a run records the implementation it used; an
older run directory, which recorded none, still resumes."""

import hashlib
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY, TINY_CONFIG, assert_close_to_scale
from flax import nnx

from inception_jax import (checkpointing, config_checks, config_lib, convolution, cost,
                           layers, models, rundir, sweep, train)
from inception_jax.errors import ConfigError


@pytest.mark.parametrize('kernel, in_features, stride, padding', [
    ((3, 3), 64, 1, 'SAME'), ((3, 3), 64, 2, 'VALID'), ((1, 7), 64, 1, 'SAME'),
    ((7, 1), 64, 1, 'SAME'), ((1, 1), 8, 1, 'SAME'), ((3, 3), 8, 2, 'SAME'),
    ((1, 1), 64, 2, 'VALID'), ((3, 3), 8, 1, 'VALID'), ((3, 3), 64, 1, 'VALID'),
    ((3, 3), 8, 2, 'VALID')])
def test_cpu_matmul_conv_and_its_gradients_are_xlas(kernel, in_features, stride, padding):
  """`cpu_matmul_conv` (1×1 as a matrix product, the filter gradient of k×k
  over ≥ 64 channels as k² products, VALID padded by one and cut) against
  XLA's convolution and its autodiff: the same values and gradients up to
  float32 rounding."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 10, in_features))
  w = jax.random.normal(jax.random.key(1), (*kernel, in_features, 5)) * 0.1
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(
      convolution.conv2d(x, w, stride, padding, impl)))
  np.testing.assert_allclose(convolution.conv2d(x, w, stride, padding, 'cpu_matmul'),
                             convolution.xla_conv(x, w, stride, padding),
                             rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.grad(loss('cpu_matmul'), (0, 1))(x, w),
                       jax.grad(loss('xla'), (0, 1))(x, w)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('backend, expected', [('cpu', 'cpu_matmul'), ('gpu', 'xla'),
                                               ('tpu', 'xla')])
def test_auto_is_cpu_matmul_on_a_cpu_only(monkeypatch, backend, expected):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert convolution.resolve('auto') == expected
  for impl in convolution.IMPLS:
    assert convolution.resolve(impl) == impl
  spec = models.preset('inception_v3', **TINY)
  assert spec.conv_impl == 'auto'                         # resolved when built
  model = nnx.eval_shape(lambda: models.Inception(spec, image_size=75, rngs=nnx.Rngs(0)))
  assert model.conv_impl == expected
  assert {l.conv_impl for l in layers.iter_layers(model)
          if isinstance(l, layers.ConvBN)} == {expected}


def test_an_unknown_implementation_is_a_clear_error():
  with pytest.raises(ConfigError, match=r"model.conv_impl must be one of .*'cpu_matmul'"):
    models.InceptionSpec.from_config(dict(conv_impl='cudnn'))
  assert 'xla' in config_checks.RULES['model.conv_impl'].problem('matmul')


def _tiny_model(impl):
  spec = models.preset('inception_v3', **TINY, num_classes=10, conv_impl=impl)
  return models.Inception(spec, image_size=75, rngs=nnx.Rngs(0))


def _loss_and_grads(model, x, labels):
  """A train-mode step's loss, logits, gradients and BatchNorm statistics
  (dropout off: the same mask either way, but no key to pass)."""
  model.Dropout.deterministic = True
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = m(x, return_aux=True)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + 0.4 * optax.softmax_cross_entropy_with_integer_labels(aux, labels).mean())
    return loss, (logits, nnx.state(m, nnx.BatchStat))

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  return step(params), jax.make_jaxpr(step)(params)


def test_the_network_is_the_same_either_way():
  """The tiny network built both ways from the same seed: the same
  parameters, and the same logits, loss, gradients and BatchNorm statistics
  up to float32 rounding, though the CPU computes another graph."""
  x = jax.random.normal(jax.random.key(0), (4, 75, 75, 3))
  labels = jnp.array([0, 3, 7, 9])
  xla_model, cpu_model = _tiny_model('xla'), _tiny_model('cpu_matmul')
  flat = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))
  for path, value in flat(nnx.state(xla_model)).items():
    np.testing.assert_array_equal(flat(nnx.state(cpu_model))[path], value)
  (xla, xla_jaxpr), (cpu, cpu_jaxpr) = (_loss_and_grads(model, x, labels)
                                        for model in (xla_model, cpu_model))
  # Forward and backward: the CPU's has matrix products where XLA's has
  # convolutions (1×1s, filter gradients over >= 64 channels).
  ops = lambda jaxpr, name: len(re.findall(rf'\b{name}\[', str(jaxpr)))
  assert ops(cpu_jaxpr, 'conv_general_dilated') < ops(xla_jaxpr, 'conv_general_dilated')
  assert ops(cpu_jaxpr, 'dot_general') > ops(xla_jaxpr, 'dot_general') + 20
  (xla_loss, (xla_logits, xla_stats)), xla_grads = xla
  (cpu_loss, (cpu_logits, cpu_stats)), cpu_grads = cpu
  # Measured: loss 3e-7, logits 4e-6, statistics 2e-6 and gradients 5e-5
  # relative to each array's largest entry. Only the order of float32 sums
  # differs; the gradients' differences grow most, on their way back through
  # train-mode BatchNorm (which subtracts means and divides by small
  # deviations). A wrong tap or a lost row moves them by order one.
  np.testing.assert_allclose(cpu_loss, xla_loss, rtol=1e-5)
  assert_close_to_scale(cpu_logits, xla_logits, 3e-5, 'logits')
  for name, pair, rtol in (('gradient', (cpu_grads, xla_grads), 5e-4),
                           ('statistic', (cpu_stats, xla_stats), 3e-5)):
    got, want = map(flat, pair)
    assert got.keys() == want.keys()
    for path in want:
      assert_close_to_scale(got[path], want[path], rtol, f'{name} {jax.tree_util.keystr(path)}')


def test_cost_counts_the_network_as_written_whatever_it_runs_with(tiny_spec):
  """`cost.count` traces XLA's convolutions for a CPU-built model too: the
  CPU forms compute extra outputs of VALID convolutions, which are no part
  of the network's cost."""
  xla, cpu = tiny_spec(conv_impl='xla'), tiny_spec(conv_impl='cpu_matmul')
  cpu_model = nnx.eval_shape(lambda: models.Inception(cpu, image_size=75, rngs=nnx.Rngs(0)))
  assert cost.count(cpu, 75, model=cpu_model) == cost.count(xla, 75)
  forward, state, x = cost._forward(cpu_model, 75, return_aux=False)
  assert cost.jaxpr_macs(jax.make_jaxpr(forward)(state, x)) > cost.count(xla, 75).macs


# --- Training runs ---------------------------------------------------------------

# Three steps, a checkpoint after the second (for the resume below) and at the end.
RUN = ['total_steps=3', 'checkpoint_every_steps=2', 'keep_checkpoints=5',
       'eval_every_steps=0', 'tracking.tensorboard=false', 'tracking.progress=false']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The tiny run as configured ('auto': the CPU's forms here) and with XLA's
  convolutions, on this process's 8 devices."""
  out = {}
  for name, extra in (('auto', []), ('xla', ['model.conv_impl=xla'])):
    workdir = str(tmp_path_factory.mktemp(name))
    train.run(config_lib.load(TINY_CONFIG, RUN + extra), workdir)
    out[name] = workdir
  return out


def _train_rows(workdir):
  return [r for r in rundir.read_metrics(workdir) if 'train/loss' in r]


@pytest.mark.xdist_group('conv_impl_runs')
def test_a_run_records_the_implementation_it_used(runs):
  for name, impl in (('auto', 'cpu_matmul'), ('xla', 'xla')):
    config = rundir.read_json(os.path.join(runs[name], rundir.CONFIG))
    result = rundir.read_json(os.path.join(runs[name], rundir.RESULT))
    assert config['model']['conv_impl'] == result['conv_impl'] == impl
  # What `auto` became is no change to the config that said `auto`: a sweep
  # finds the run up to date; an explicit other choice is a change.
  given = config_lib.load(TINY_CONFIG, RUN).to_dict()
  assert given['model']['conv_impl'] == 'auto'
  assert sweep.config_changes(runs['auto'], given) == []
  assert sweep.config_changes(runs['xla'], given) == []
  given['model']['conv_impl'] = 'xla'
  assert sweep.config_changes(runs['auto'], given) == [
      'model.conv_impl: "cpu_matmul" -> "xla"']


@pytest.mark.xdist_group('conv_impl_runs')
def test_xla_convolutions_on_a_cpu_train_as_the_cpu_forms_do(runs):
  """Acceptance: the run with `model.conv_impl=xla` matches the default run
  to float32 rounding. The first step's loss differs by a rounding or two
  (about 1e-7 relative); over three steps of updates the differences grow,
  the gradient norm's to about 1e-5 at step 3: rtol 1e-4 holds them with a
  margin of ten, and a real difference (a wrong tap, a lost row) moves them
  by far more."""
  auto, xla = (_train_rows(runs[name]) for name in ('auto', 'xla'))
  assert [r['step'] for r in auto] == [r['step'] for r in xla] == [1, 2, 3]
  for a, x in zip(auto, xla):
    for key in ('train/loss', 'train/grad_norm', 'train/main_loss', 'train/aux_loss'):
      assert np.isfinite(x[key]), key
      np.testing.assert_allclose(x[key], a[key], rtol=1e-4, err_msg=f'{key} step {a["step"]}')
  np.testing.assert_allclose(auto[0]['train/loss'], xla[0]['train/loss'], rtol=1e-5)
  results = [rundir.read_json(os.path.join(runs[n], rundir.RESULT)) for n in ('auto', 'xla')]
  for key in ('eval/loss', 'eval_raw/loss'):
    np.testing.assert_allclose(results[1]['metrics'][key], results[0]['metrics'][key],
                               rtol=1e-4, err_msg=key)
  assert results[0]['macs'] == results[1]['macs']      # the network as written, both


@pytest.mark.xdist_group('conv_impl_runs')
def test_a_run_from_before_conv_impl_resumes(runs, tmp_path):
  """A run directory whose config.json and checkpoint recorded no
  `model.conv_impl` (the release before it) resumes under today's config,
  which says 'auto', and goes on exactly as the run that was not stopped; a
  sweep finds it up to date."""
  old = str(tmp_path / 'old')
  shutil.copytree(runs['auto'], old)
  shutil.rmtree(os.path.join(old, 'checkpoints', '3'))
  os.remove(os.path.join(old, rundir.RESULT))
  checkpoint = os.path.join(old, 'checkpoints', '2')
  for path in (os.path.join(old, rundir.CONFIG), os.path.join(checkpoint, 'config', 'metadata')):
    _edit_json(path, lambda recorded: recorded['model'].pop('conv_impl'))
  # The edited file's checksum with it: the checkpoint is old, not damaged.
  with open(os.path.join(checkpoint, 'config', 'metadata'), 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  _edit_json(os.path.join(checkpoint, checkpointing.CHECKSUMS),
             lambda sums: sums.update({'config/metadata': digest}))
  config = config_lib.load(TINY_CONFIG, RUN)
  assert sweep.config_changes(old, config.to_dict()) == []
  result = train.run(config, old)
  assert result['resumed_from_step'] == 2 and result['conv_impl'] == 'cpu_matmul'
  exact = lambda rows: [(r['step'], r['train/loss'], r['train/grad_norm']) for r in rows]
  assert exact(_train_rows(old)) == exact(_train_rows(runs['auto']))


def _edit_json(path, edit):
  with open(path) as f:
    value = json.load(f)
  edit(value)
  with open(path, 'w') as f:
    json.dump(value, f)
