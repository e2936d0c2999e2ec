"""The trainer: the run directory, the NaN guard, tracking (1 vs 8 devices:
test_checkpointing.py, which shares those runs with its resume tests)."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from helpers import TINY_CONFIG

from inception_jax import config_lib, rundir, train

TINY = TINY_CONFIG


TINY_RUN = ['eval_every_steps=3', 'profile_steps=2']


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """One tiny run on the 8 simulated devices of this process."""
  workdir = str(tmp_path_factory.mktemp('tiny'))
  result = train.run(config_lib.load(TINY, TINY_RUN), workdir)
  return workdir, result


@pytest.mark.xdist_group('tiny_run')
def test_run_directory_follows_the_contract(tiny_run):
  workdir, result = tiny_run
  assert jax.device_count() == 8
  for name in ('config.json', 'metrics.jsonl', 'result.json'):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  # config.profile_steps=2: a trace of steps 2-3, for TensorBoard and Perfetto.
  for pattern in ('*.xplane.pb', '*.trace.json.gz'):
    assert glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*', pattern))
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['model']['stem'] == 'factorized' and config['batch_size'] == 16
  rows = rundir.read_metrics(workdir)
  train_rows = [r for r in rows if 'train/loss' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  for key in ('train/loss', 'train/lr', 'train/grad_norm', 'train/clip_norm',
              'train/images_per_sec'):
    assert all(np.isfinite(r[key]) for r in train_rows), key
  # Logged every step: the fraction of the interval's steps clipped is 0 or 1,
  # and says whether the norm after weight decay passed 2.0.
  assert all(r['train/clipped'] == float(r['train/clip_norm'] > 2.0) for r in train_rows)
  eval_rows = [r for r in rows if 'eval/top1_error' in r]
  assert [r['step'] for r in eval_rows] == [3, 6]
  for row in eval_rows:
    for key in ('eval/loss', 'eval/top1_error', 'eval/top5_error', 'eval_raw/loss',
                'eval_raw/top1_error', 'eval_raw/top5_error'):
      assert key in row
    # Errors in %: top-1 at least top-5; 100 images, so whole percents.
    assert 0 <= row['eval/top5_error'] <= row['eval/top1_error'] <= 100
    assert row['eval/top1_error'] == round(row['eval/top1_error'])
  saved = json.load(open(os.path.join(workdir, 'result.json')))
  assert saved['steps'] == 6 and saved['devices'] == 8 and saved['grad_accum_steps'] == 1
  assert saved['eval_examples'] == 100                 # the whole synthetic split
  assert saved['metrics']['eval/top1_error'] == eval_rows[-1]['eval/top1_error']
  assert saved['platform'] == 'cpu' and saved['device_kind'] and saved['finished_at']
  assert saved['params'] > 0 and saved['macs'] > 0
  # 256 examples / 16 = 16 steps per epoch: no decay within 6 steps.
  assert train_rows[0]['train/lr'] == pytest.approx(0.045)


@pytest.mark.xdist_group('tiny_run')
def test_rerunning_a_finished_run_keeps_its_result(tiny_run):
  """`train` on a finished run changes nothing (result.json's speed and wall
  time are those of the run, not of a restore and an evaluation)."""
  workdir, first = tiny_run
  written = open(os.path.join(workdir, 'result.json'), 'rb').read()
  assert first['train_images_per_sec'] > 0
  again = train.run(config_lib.load(TINY, TINY_RUN), workdir)
  assert open(os.path.join(workdir, 'result.json'), 'rb').read() == written
  assert again == rundir.read_json(os.path.join(workdir, 'result.json'))
  rows = [r['step'] for r in rundir.read_metrics(workdir) if 'train/loss' in r]
  assert rows == [1, 2, 3, 4, 5, 6]


@pytest.mark.xdist_group('tiny_run')
def test_eval_raw_and_ema_differ_and_ema_warm_up_moves_weights(tiny_run):
  workdir, _ = tiny_run
  last = [r for r in rundir.read_metrics(workdir) if 'eval/loss' in r][-1]
  assert last['eval/loss'] != last['eval_raw/loss']


def test_float64_without_64_bit_jax_is_a_clear_error(tmp_path):
  """In a process without jax_enable_x64, float64 would silently be float32."""
  config = config_lib.load(TINY, ['model.dtype=float64'])
  with pytest.raises(config_lib.ConfigError, match='JAX_ENABLE_X64'):
    train.run(config, str(tmp_path))


def test_huge_learning_rate_stops_with_a_clear_message(tmp_path, cli_main):
  """The NaN guard: one line naming the step, the rows before it intact, no
  result; the failed run still has its TensorBoard HParams session."""
  from test_tracking import the_session
  code, _, err = cli_main('train', '--config', TINY, '--workdir', tmp_path,
                          '--config.optim.learning_rate=1e9')
  assert code == 3, err[-3000:]
  assert 'Traceback' not in err
  message = [l for l in err.splitlines() if l.startswith('error:')]
  assert len(message) == 1 and 'non-finite' in message[0] and 'at step' in message[0]
  step = int(message[0].split('at step ')[1].split()[0])
  rows = rundir.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == list(range(1, step))   # all before it, intact
  assert not os.path.exists(tmp_path / 'result.json')
  hparams, _, ended = the_session(str(tmp_path))
  assert hparams['optim.learning_rate'].number_value == 1e9 and not ended


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  """Another process holds the workdir (an orphaned run, a still-queued job):
  a second launch stops at once with a clear message and writes nothing."""
  import fcntl
  with open(tmp_path / '.lock', 'a+') as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(train.UserError, match='another process is training'):
      train.run(config_lib.load(TINY), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['.lock']


def test_unwritable_workdir_is_a_clear_error(tmp_path, cli_main):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  code, _, err = cli_main('train', '--config', TINY, '--workdir', blocker / 'run')
  assert code == 2
  assert 'cannot write to workdir' in err and 'Traceback' not in err


def test_several_processes_join_through_jax_distributed(monkeypatch):
  """`launch.py train` calls parallel.initialize() first: with the
  coordinator variables it passes them on; under SLURM or Open MPI it lets
  jax.distributed detect the cluster; a single process starts nothing."""
  from inception_jax import parallel
  calls = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  for key in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(key, raising=False)
  parallel.initialize()
  monkeypatch.setenv('SLURM_NTASKS', '1')
  parallel.initialize()
  assert calls == []
  monkeypatch.setenv('SLURM_NTASKS', '4')
  parallel.initialize()
  assert calls == [{}]
  monkeypatch.delenv('SLURM_NTASKS')
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  parallel.initialize()
  assert calls[-1] == dict(coordinator_address='localhost:1234', num_processes=2,
                           process_id=1)


def test_label_rank_is_the_place_in_a_stable_descending_sort():
  """Top-1 and top-5 errors count `label_rank`: numpy's stable argsort (as
  `evaluate` ranks) and argmax agree with it, ties and all; a NaN row is last."""
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, size=(64, 10)).astype(np.float32)    # many ties
  labels = rng.integers(0, 10, size=64)
  logits[3, 5] = np.nan
  rank = np.asarray(train.label_rank(jax.numpy.asarray(logits), jax.numpy.asarray(labels)))
  order = np.argsort(-logits, axis=1, kind='stable')
  expected = np.argmax(order == labels[:, None], axis=1)
  expected[3] = 10
  np.testing.assert_array_equal(rank, expected)
  finite = ~np.isnan(logits).any(1)
  np.testing.assert_array_equal((rank == 0)[finite], (np.argmax(logits, 1) == labels)[finite])


def test_an_evaluation_gathers_nothing_and_each_batch_adds_to_the_last(tiny_spec):
  """On 8 devices the evaluation program's only collectives sum its counts
  (no gathered logits), and each batch's program takes the previous totals:
  the programs run one after another, as the train steps do."""
  from flax import nnx

  from inception_jax import models, parallel, trainstate
  model = models.Inception(tiny_spec(), image_size=75, rngs=nnx.Rngs(0))
  _, eval_graphdef = trainstate.graphdefs(model)
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = trainstate.TrainState(step=np.int32(0), params=params, batch_stats=stats,
                                opt_state=(), ema_params=params, ema_batch_stats=stats)
  mesh = parallel.data_mesh()
  rng = np.random.default_rng(0)
  batch = jax.device_put({'image': rng.integers(0, 256, (16, 75, 75, 3), dtype=np.uint8),
                          'label': rng.integers(0, 10, 16).astype(np.int32),
                          'mask': np.arange(16) < 13}, parallel.data_sharded(mesh))
  zeros = train.eval_totals(state)
  step = jax.jit(train.make_eval_step(eval_graphdef),
                 out_shardings=parallel.replicated(mesh)).lower(state, batch, zeros).compile()
  program = step.as_text()
  # Only the sums cross devices (how XLA combines them may vary by version).
  assert ' all-reduce(' in program
  assert not any(op in program for op in ('all-gather', 'all-to-all', 'collective-permute'))
  once = jax.device_get(step(state, batch, zeros))
  twice = jax.device_get(step(state, batch, step(state, batch, zeros)))
  assert once['count'] == 13 and twice == {key: 2 * value for key, value in once.items()}
