"""Resuming under edits a researcher makes: a shorter run, another number of
data workers, a rerun from an earlier checkpoint (after a divergence). Each
either keeps the run exact or is refused in one line, losing nothing."""

import json
import os

import pytest
from helpers import TINY_CONFIG, run_cli

from inception_jax import rundir

pytestmark = pytest.mark.xdist_group('resume_edits')

COMMON = ('--config.checkpoint_every_steps=2', '--config.keep_checkpoints=5',
          '--config.tracking.tensorboard=false')


def train(workdir, *extra):
  return run_cli('train', '--config', TINY_CONFIG, '--workdir', workdir, *COMMON, *extra,
                 devices=1)


def one_error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  return lines[0]


def checkpoints(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
                if n.isdigit())


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 6-step run with checkpoints at steps 2, 4 and 6."""
  workdir = str(tmp_path_factory.mktemp('resume') / 'run')
  proc = train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, json.load(open(os.path.join(workdir, 'result.json')))


def test_total_steps_below_the_checkpoint_is_refused(finished, tmp_path):
  workdir, _ = finished
  copy = tmp_path / 'run'
  os.system(f'cp -r {workdir} {copy}')
  os.remove(copy / 'result.json')            # interrupted after its last save
  proc = train(copy, '--config.total_steps=4')
  line = one_error_line(proc)
  assert 'checkpoint is at step 6, past total_steps 4' in line and '--from_step' in line
  assert checkpoints(copy) == [2, 4, 6] and not (copy / 'result.json').exists()


def test_from_step_resumes_an_earlier_checkpoint_exactly(finished, tmp_path):
  """A finished run rerun from step 2 ends where it ended, bit for bit; the
  later checkpoints and the old result.json are kept aside, not deleted."""
  workdir, result = finished
  copy = tmp_path / 'run'
  os.system(f'cp -r {workdir} {copy}')
  proc = train(copy, '--from_step', 2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from the checkpoint at step 2' in proc.stderr
  again = json.load(open(copy / 'result.json'))
  assert again['metrics'] == result['metrics'] and again['resumed_from_step'] == 2
  assert sorted(os.listdir(copy / 'checkpoints_discarded'))[0].startswith('4-')
  assert len(os.listdir(copy / 'checkpoints_discarded')) == 2
  assert [n for n in os.listdir(copy) if n.startswith('result.discarded-')]
  assert [r['step'] for r in rundir.read_metrics(str(copy)) if 'train/loss' in r] == \
      [1, 2, 3, 4, 5, 6]
  # A step without a checkpoint: one line listing the ones there are.
  line = one_error_line(train(copy, '--from_step', 3))
  assert 'no checkpoint of step 3' in line and '2, 4, 6' in line


@pytest.mark.parametrize('workers', ['0', '2'])
def test_another_number_of_data_workers_is_refused_on_resume(finished, tmp_path, workers):
  """The data position in a checkpoint is that of its worker layout: another
  count resumed on other batches or failed inside Grain; it is refused, also
  with --allow_config_change."""
  workdir, _ = finished
  copy = tmp_path / 'run'
  os.system(f'cp -r {workdir} {copy}')
  os.remove(copy / 'result.json')
  saved = json.load(open(copy / 'config.json'))['data']['num_workers']
  changed = '3' if str(saved) == workers else workers
  for extra in ((), ('--allow_config_change',)):
    line = one_error_line(train(copy, f'--config.data.num_workers={changed}', *extra))
    assert 'data.num_workers cannot change on resume' in line
    assert f'data.num_workers={saved!r}' in line
  assert checkpoints(copy) == [2, 4, 6]


@pytest.mark.parametrize('change', ['data.num_threads=1', 'data.prefetch=1'])
def test_reader_threads_and_prefetch_may_change_on_resume(finished, tmp_path, change):
  """The keys a resume may change keep it exact: resumed at step 2 with
  another reader-thread count or prefetch depth, the run ends bit for bit
  where it ended."""
  workdir, result = finished
  copy = tmp_path / 'run'
  os.system(f'cp -r {workdir} {copy}')
  proc = train(copy, '--from_step', 2, f'--config.{change}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(copy / 'result.json'))['metrics'] == result['metrics']
