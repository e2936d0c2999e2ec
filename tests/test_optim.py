"""The optimizer chain, schedule, weight-decay mask and EMA against closed forms,
hand-written TF1 update equations, and TensorFlow's own optimizers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from inception_jax import config_lib, layers, models, optim, specs
from inception_jax.errors import ConfigError

CONFIG = 'configs/inception_v3.py'
# A small problem: fractional epochs, a fast staircase (decay every 2.5 steps).
STEPS_PER_EPOCH, DECAY_EPOCHS, LR, RATE = 1.25, 2.0, 0.5, 0.5
NUM_STEPS = 12


def optim_cfg(**overrides):
  """The paper's optimizer spec, its rate not scaled by the batch (paper
  scale's base_batch_size 1600) unless asked."""
  overrides = {'base_batch_size': 0, **overrides}
  config = config_lib.load(CONFIG, {f'optim.{k}': v for k, v in overrides.items()})
  return specs.RunSpec.from_config(config).optim


def small_cfg(name, wd, clip):
  return optim_cfg(name=name, learning_rate=LR, decay_epochs=DECAY_EPOCHS,
                   decay_rate=RATE, weight_decay=wd, grad_clip_norm=clip)


def problem(seed=0):
  """Initial params and a fixed gradient sequence whose global norm ranges from
  ~0.3 to ~6, so a threshold of 2.0 clips some steps and not others."""
  rng = np.random.default_rng(seed)
  params = {'dense': {'kernel': rng.normal(size=(3, 2)).astype(np.float32),
                      'bias': rng.normal(size=(2,)).astype(np.float32)}}
  scales = np.geomspace(0.2, 4.0, NUM_STEPS)[rng.permutation(NUM_STEPS)]
  grads = [{'dense': {'kernel': (s * rng.normal(size=(3, 2))).astype(np.float32),
                      'bias': (s * rng.normal(size=(2,))).astype(np.float32)}}
           for s in scales]
  return params, grads


def run_optax(tx, params, grads):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for g in grads:
    updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree.map(np.asarray, params))
  return history


def global_norm(tree):
  return math.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(tree)))


def total_grad(g, p, wd, clip):
  """Gradient of the loss + wd·‖kernel‖²/2, clipped by global norm (float64)."""
  g = {'kernel': g['kernel'] + wd * p['kernel'], 'bias': g['bias'].copy()}
  norm = global_norm(g)
  if clip and norm > clip:
    g = {k: v * clip / norm for k, v in g.items()}
  return g


def numpy_reference(name, params, grads, wd, clip, momentum=0.9, rho=0.9, eps=1.0):
  """TF1's update equations written out (TF's `rmsprop.py` and `momentum.py`;
  docs/paper_notes.md#rmsprop), in float64."""
  p = {k: v.astype(np.float64) for k, v in params['dense'].items()}
  ms = {k: np.ones_like(v) for k, v in p.items()}
  mom = {k: np.zeros_like(v) for k, v in p.items()}
  history = []
  for step, g in enumerate(grads):
    lr = LR * RATE ** math.floor(step / (DECAY_EPOCHS * STEPS_PER_EPOCH))
    g = total_grad({k: v.astype(np.float64) for k, v in g['dense'].items()}, p, wd, clip)
    for k in p:
      if name == 'rmsprop':
        ms[k] = rho * ms[k] + (1 - rho) * g[k] ** 2
        mom[k] = momentum * mom[k] + lr * g[k] / np.sqrt(ms[k] + eps)
        p[k] = p[k] - mom[k]
      else:
        mom[k] = momentum * mom[k] + g[k]
        p[k] = p[k] - lr * mom[k]
    history.append({'dense': dict(p)})
  return history


def tf_reference(tf, name, params, grads, wd, clip):
  """The same steps through `tf.compat.v1.train` (eager), with the weight decay
  as Google adds it: wd · tf.nn.l2_loss(kernel) in the loss."""
  kernel = tf.Variable(params['dense']['kernel'])
  bias = tf.Variable(params['dense']['bias'])
  global_step = tf.Variable(0, dtype=tf.int64)
  lr = tf.compat.v1.train.exponential_decay(
      LR, global_step, DECAY_EPOCHS * STEPS_PER_EPOCH, RATE, staircase=True)
  if name == 'rmsprop':
    opt = tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0)
  else:
    opt = tf.compat.v1.train.MomentumOptimizer(lr, momentum=0.9)
  history = []
  for g in grads:
    with tf.GradientTape() as tape:
      loss = (tf.reduce_sum(g['dense']['kernel'] * kernel) +
              tf.reduce_sum(g['dense']['bias'] * bias) + wd * tf.nn.l2_loss(kernel))
    tf_grads = tape.gradient(loss, [kernel, bias])
    if clip:
      tf_grads, _ = tf.clip_by_global_norm(tf_grads, clip)
    opt.apply_gradients(zip(tf_grads, [kernel, bias]), global_step=global_step)
    history.append({'dense': {'kernel': kernel.numpy(), 'bias': bias.numpy()}})
  return history


def assert_histories_close(got, want, rtol=2e-5, atol=2e-6):
  """Float32 against float64 equations or TF's float32 kernels: 12 steps of
  elementwise rounding (~1e-7 per operation, its pattern depending on the CPU's
  instruction set) differ by ≤ 0.08 of this tolerance on the machine that wrote
  the test (≤ 6e-7 absolute). A recipe mistake (ε = 0.5 instead of 1, the mean
  square started at 0 instead of 1, the decay a step late) differs by ≥ 0.8."""
  assert len(got) == len(want) == NUM_STEPS
  for step, (a, b) in enumerate(zip(got, want)):
    for path, x in jax.tree_util.tree_leaves_with_path(a):
      y = dict(jax.tree_util.tree_leaves_with_path(b))[path]
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                                 err_msg=f'step {step} {jax.tree_util.keystr(path)}')


def check_problem_is_not_trivial(params, grads, history, clip):
  moved = global_norm(jax.tree.map(lambda a, b: a - b, history[-1], params))
  assert moved > 0.1
  if clip:
    norms = [global_norm(g) for g in grads]
    assert min(norms) < clip < max(norms)


SETTINGS = [pytest.param(0.0, 0.0, id='plain'),
            pytest.param(0.1, 2.0, id='decay+clip')]


@pytest.mark.parametrize('name', ['rmsprop', 'momentum'])
@pytest.mark.parametrize('wd,clip', SETTINGS)
def test_chain_matches_tf1_equations(name, wd, clip):
  params, grads = problem()
  tx = optim.make_optimizer(small_cfg(name, wd, clip), steps_per_epoch=STEPS_PER_EPOCH,
                            global_batch=32)
  got = run_optax(tx, params, grads)
  check_problem_is_not_trivial(params, grads, got, clip)
  assert_histories_close(got, numpy_reference(name, params, grads, wd, clip))


@pytest.mark.parametrize('name', ['rmsprop', 'momentum'])
@pytest.mark.parametrize('wd,clip', SETTINGS)
def test_chain_matches_tensorflow(name, wd, clip):
  import tensorflow as tf
  params, grads = problem(seed=1)
  tx = optim.make_optimizer(small_cfg(name, wd, clip), steps_per_epoch=STEPS_PER_EPOCH,
                            global_batch=32)
  got = run_optax(tx, params, grads)
  check_problem_is_not_trivial(params, grads, got, clip)
  assert_histories_close(got, tf_reference(tf, name, params, grads, wd, clip))


def test_weight_decay_comes_before_clipping():
  """A zero loss gradient on a large kernel: the decay term alone is clipped."""
  cfg = optim_cfg(name='momentum', momentum=0.0, learning_rate=1.0, decay_rate=1.0,
                  weight_decay=1.0, grad_clip_norm=2.0)
  tx = optim.make_optimizer(cfg, steps_per_epoch=10, global_batch=32)
  params = {'kernel': jnp.array([30.0, 40.0]), 'bias': jnp.array([5.0])}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], [-1.2, -1.6], rtol=1e-6)  # −2·w/‖w‖
  np.testing.assert_array_equal(updates['bias'], [0.0])


def test_clipping_bounds_the_global_norm():
  cfg = optim_cfg(name='momentum', momentum=0.0, learning_rate=1.0, decay_rate=1.0,
                  weight_decay=0.0, grad_clip_norm=2.0)
  tx = optim.make_optimizer(cfg, steps_per_epoch=10, global_batch=32)
  params, grads = problem()
  state = tx.init(params)
  clipped = 0
  for g in grads:
    updates, state = tx.update(g, state, params)
    norm, out = global_norm(g), global_norm(updates)
    assert out <= 2.0 * (1 + 1e-6)
    if norm > 2.0:
      clipped += 1
      assert out == pytest.approx(2.0, rel=1e-6)
      np.testing.assert_allclose(updates['dense']['kernel'],
                                 -g['dense']['kernel'] * 2.0 / norm, rtol=1e-5)
    else:
      assert out == pytest.approx(norm, rel=1e-6)
  assert 0 < clipped < len(grads)
  off = optim.make_optimizer(optim_cfg(grad_clip_norm=0.0, weight_decay=0.0, momentum=0.0,
                                       name='momentum', learning_rate=1.0),
                             steps_per_epoch=10, global_batch=32)
  big = grads[int(np.argmax([global_norm(g) for g in grads]))]
  updates, _ = off.update(big, off.init(params), params)
  assert global_norm(big) > 2.0
  assert global_norm(updates) == pytest.approx(global_norm(big), rel=1e-6)


# The learning-rate schedule.

def test_schedule_is_a_staircase_in_float_steps():
  cfg = optim_cfg(learning_rate=0.045, decay_epochs=2.0, decay_rate=0.94)
  schedule = optim.learning_rate_schedule(cfg, steps_per_epoch=7.5, global_batch=1600)
  jitted = jax.jit(schedule)
  for t in range(100):
    want = 0.045 * 0.94 ** math.floor(t / 15.0)
    assert float(schedule(t)) == pytest.approx(want, rel=1e-6)
    assert float(jitted(jnp.int32(t))) == pytest.approx(want, rel=1e-6)
  assert float(schedule(14)) == pytest.approx(0.045)
  assert float(schedule(15)) == pytest.approx(0.045 * 0.94)


def test_schedule_warmup_then_decay_and_batch_scaling():
  # The TPU recipe's form: 0.165 per 256 images at a global batch of 1024.
  cfg = optim_cfg(learning_rate=0.165, base_batch_size=256, warmup_epochs=2.0,
                  decay_epochs=3.0, decay_rate=0.94)
  schedule = optim.learning_rate_schedule(cfg, steps_per_epoch=5.0, global_batch=1024)
  lr0, warmup, decay = 0.165 * 1024 / 256, 10.0, 15.0
  for t in range(80):
    want = lr0 * t / warmup if t < warmup else lr0 * 0.94 ** math.floor((t - warmup) / decay)
    assert float(schedule(t)) == pytest.approx(want, rel=1e-6, abs=1e-9)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.66)
  assert float(schedule(24)) == pytest.approx(0.66)
  assert float(schedule(25)) == pytest.approx(0.66 * 0.94)
  unscaled = optim.learning_rate_schedule(optim_cfg(learning_rate=0.165),
                                          steps_per_epoch=5.0, global_batch=1024)
  assert float(unscaled(0)) == pytest.approx(0.165)


def test_schedule_matches_tensorflow_exponential_decay():
  import tensorflow as tf
  cfg = optim_cfg(learning_rate=0.045, decay_epochs=2.0, decay_rate=0.94)
  steps_per_epoch = 3.7  # a non-integer number of steps per decay (7.4)
  schedule = optim.learning_rate_schedule(cfg, steps_per_epoch=steps_per_epoch,
                                          global_batch=1600)
  for t in range(60):
    want = tf.compat.v1.train.exponential_decay(
        0.045, tf.constant(t, tf.int64), 2.0 * steps_per_epoch, 0.94, staircase=True)
    want = want() if callable(want) else want
    assert float(schedule(t)) == pytest.approx(float(want), rel=1e-6)


def test_bad_optimizer_config_is_a_clear_error():
  """The spec refuses them when it is made, before an optimizer is built."""
  with pytest.raises(ConfigError, match=r"optim\.name must be one of \['rmsprop', 'momentum'\] \(got 'adam'\)"):
    optim_cfg(name='adam')
  with pytest.raises(ConfigError, match='grad_clip_norm'):
    optim_cfg(grad_clip_norm=-1.0)
  with pytest.raises(ConfigError, match='steps_per_epoch'):
    optim.learning_rate_schedule(optim_cfg(), steps_per_epoch=0, global_batch=32)


# The weight-decay mask on the real model.

@pytest.fixture(scope='module')
def tiny_model():
  """The real tiny network, built abstractly (shapes only) to keep this fast."""
  spec = models.preset('inception_v3', width_multiplier=0.05, min_depth=4)
  return nnx.eval_shape(lambda: models.Inception(spec, image_size=75, rngs=nnx.Rngs(0)))


def filled(state, seed=0):
  """`state` with random float32 values in place of its abstract leaves."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), state)


def dict_path(path):
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def test_weight_decay_mask_on_the_model(tiny_model):
  _, params, _ = nnx.split(tiny_model, nnx.Param, ...)
  params = filled(params)
  mask = optim.weight_decay_mask(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  flags = {dict_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  # The expected sets, from the module graph rather than from leaf names.
  modules = [(path, m) for path, m in nnx.iter_graph(tiny_model)
             if isinstance(m, (nnx.Conv, nnx.Linear, layers.BatchNorm))]
  kernels = {(*path, 'kernel') for path, m in modules if not isinstance(m, layers.BatchNorm)}
  offsets = {(*path, 'bias') for path, m in modules if getattr(m, 'bias', None) is not None}
  n_bn = sum(isinstance(m, layers.BatchNorm) for _, m in modules)
  assert n_bn > 90 and len(kernels) == len(modules) - n_bn
  assert ('Logits', 'bias') in offsets and ('stem', 'Conv2d_1a_3x3', 'bn', 'bias') in offsets
  assert set(flags) == kernels | offsets
  assert {p for p, m in flags.items() if m} == kernels
  # optax.masked takes it as is: decay lands on kernels only.
  tx = optax.add_decayed_weights(0.5, mask=optim.weight_decay_mask)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  for p, u, m in zip(jax.tree.leaves(params), jax.tree.leaves(updates), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(u, 0.5 * p if m else np.zeros_like(p))


def test_full_chain_runs_on_the_model(tiny_model):
  _, params, _ = nnx.split(tiny_model, nnx.Param, ...)
  params = filled(params)
  tx = optim.make_optimizer(optim_cfg(), steps_per_epoch=100, global_batch=1600)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert 0 < global_norm(updates) <= 0.045 * 2.0 * (1 + 1e-5)  # lr · clip, as ms ≥ 0.9


# EMA of the parameters (and BN statistics).

def test_ema_decay_warms_up():
  for t in [0, 1, 5, 50, 1000, 10**6]:
    for d in [0.9999, 0.995, 0.5]:
      assert float(optim.ema_decay(t, d)) == pytest.approx(min(d, (1 + t) / (10 + t)), rel=1e-6)
  assert float(jax.jit(optim.ema_decay, static_argnums=1)(jnp.int32(0), 0.9999)) == pytest.approx(0.1)


def test_update_ema_by_hand():
  rng = np.random.default_rng(0)
  values = [rng.normal(size=(3,)) for _ in range(6)]
  tree = {'w': jnp.asarray(values[0], jnp.float32), 'count': jnp.int32(0)}
  ema = tree
  by_hand = values[0].copy()
  update = jax.jit(optim.update_ema, static_argnums=3)
  for t, v in enumerate(values[1:]):
    ema = update(ema, {'w': jnp.asarray(v, jnp.float32), 'count': jnp.int32(t + 1)},
                 jnp.int32(t), 0.9999)
    d = min(0.9999, (1 + t) / (10 + t))
    by_hand = d * by_hand + (1 - d) * v
    np.testing.assert_allclose(ema['w'], by_hand, rtol=1e-5)
    assert int(ema['count']) == t + 1 and ema['w'].dtype == jnp.float32
  assert not np.allclose(by_hand, values[-1])


def test_update_ema_on_model_state(tiny_model):
  _, state = nnx.split(tiny_model)
  state = filled(state)
  doubled = jax.tree.map(lambda x: 2 * x, state)
  ema = jax.jit(optim.update_ema, static_argnums=3)(state, doubled, 0, 0.9999)
  assert jax.tree.structure(ema) == jax.tree.structure(state)
  for s, e in zip(jax.tree.leaves(state), jax.tree.leaves(ema)):
    # float32 d·e + (1 − d)·n against the exact value: a few ulps (≤ 1.2e-7 seen).
    np.testing.assert_allclose(e, 0.1 * s + 0.9 * 2 * s, rtol=2e-6)


def test_update_ema_matches_tensorflow():
  import tensorflow as tf
  rng = np.random.default_rng(1)
  values = [rng.normal(size=(4,)).astype(np.float32) for _ in range(15)]
  var = tf.Variable(values[0])
  num_updates = tf.Variable(0, dtype=tf.int64)
  # decay 0.5: the warm-up value (1+t)/(10+t) is below it until t = 8.
  tf_ema = tf.train.ExponentialMovingAverage(0.5, num_updates=num_updates)
  tf_ema.apply([var])  # creates the shadow = values[0]; no change yet
  ema = jnp.asarray(values[0])
  for t, v in enumerate(values[1:]):
    var.assign(v)
    num_updates.assign(t)  # the same t as update_ema's step
    tf_ema.apply([var])
    ema = optim.update_ema(ema, jnp.asarray(v), t, 0.5)
    # TF computes shadow −= (1 − d)(shadow − value): other float32 roundings,
    # within 0.03 of this tolerance over these 14 updates (0.3 of the former
    # atol=1e-7, which entries near zero came close to).
    np.testing.assert_allclose(ema, tf_ema.average(var).numpy(), rtol=1e-5, atol=1e-6)
