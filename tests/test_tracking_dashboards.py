"""What a researcher sees of a sweep, read by the real clients: a 2-row ×
2-seed tiny sweep with wandb offline, run on a terminal (a pseudo-terminal),
then wandb's own records and `wandb sync`, TensorBoard's HTTP API (run names,
the HParams experiment) and the sweep's output as the terminal shows it."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import urllib.request

import portpicker
import pytest

from helpers import ROOT, TINY_CONFIG

from inception_jax import rundir, sweep

pytestmark = pytest.mark.xdist_group('dashboards')

ROWS = ('momentum', 'rmsprop')
NAMES = [f'{row}/seed_{k}' for row in ROWS for k in (0, 1)]
# The keys the two rows differ in, then the seed: TensorBoard lists them first.
VARYING = ['loss.label_smoothing', 'optim.name', 'seed']
SWEEP = f"""
def get_sweep(arg=None):
  config = {TINY_CONFIG!r}
  common = {{'tracking.wandb': True, 'total_steps': 4, 'eval_every_steps': 2}}
  return [
      dict(name='momentum', config=config, seeds=[0, 1],
           overrides={{**common, 'optim.name': 'momentum', 'loss.label_smoothing': 0.0}}),
      dict(name='rmsprop', config=config, seeds=[0, 1], overrides=common),
  ]
"""


def on_terminal(args, timeout=900, columns=120):
  """Run `args` with stdout and stderr on a pseudo-terminal `columns` wide;
  (exit status, everything written to it as text)."""
  controller, terminal = pty.openpty()
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 40, columns, 0, 0))
  proc = subprocess.Popen(args, stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL,
                          cwd=ROOT, env=dict(os.environ, WANDB_MODE='offline', TERM='xterm'))
  os.close(terminal)
  chunks, deadline = [], time.time() + timeout
  while time.time() < deadline:
    ready, _, _ = select.select([controller], [], [], 1.0)
    if ready:
      try:
        data = os.read(controller, 65536)
      except OSError:             # the last writer closed the terminal
        break
      if not data:
        break
      chunks.append(data)
    elif proc.poll() is not None:
      break
  os.close(controller)
  proc.wait(timeout=60)
  return proc.returncode, b''.join(chunks).decode(errors='replace')


def shares_a_line(screen: str, line_start: re.Pattern) -> list[str]:
  """Lines matching `line_start` that a terminal shows after other text on
  the same line: written neither after a newline nor after a carriage
  return (tqdm's clearing of its bar ends in one)."""
  return [screen[max(0, m.start() - 40):m.end() + 20] for m in line_start.finditer(screen)
          if m.start() and screen[m.start() - 1] not in '\r\n']


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  base = tmp_path_factory.mktemp('dashboards')
  path = base / 'two_rows.py'
  path.write_text(SWEEP)
  directory = str(base / 'out')
  code, screen = on_terminal([sys.executable, os.path.join(ROOT, 'launch.py'), 'sweep',
                              str(path), '--workdir', directory, '--parallel', '2'])
  assert code == 0, screen[-3000:]
  return directory, screen


def test_sweep_reports_as_it_goes_on_a_terminal(tiny_sweep):
  directory, screen = tiny_sweep
  assert '4 runs to train (2 rows), 2 at a time' in screen
  assert f'tensorboard --logdir {directory}' in screen
  assert os.path.join(directory, 'ROW', 'seed_K', 'train.log') in screen
  # A line per finished run: k/N done, running, failed and time left.
  for k in range(1, 5):
    assert re.search(rf'\] done: \d+m\d\ds · {k}/4 done, \d running', screen), k
  assert re.search(r'1/4 done, 1 running, about \d+m\d\ds left', screen)
  # Before each row's first compilation (the silent minute of a cold start).
  for row in ROWS:
    assert f'[{row}/seed_0] compiling the model' in screen
  # The bar of finished runs was drawn, and no line was written onto it.
  assert re.search(r'\d/4 runs', screen)
  assert not shares_a_line(screen, re.compile(r'\[(momentum|rmsprop)/seed_\d\] '))


def test_wandb_runs_are_named_by_row_and_seed(tiny_sweep):
  directory, _ = tiny_sweep
  recorded = {}
  for name in NAMES:
    runs = [d for d in os.listdir(os.path.join(directory, name, 'wandb'))
            if d.startswith('offline-run-')]
    assert len(runs) == 1, runs
    run_dir = os.path.join(directory, name, 'wandb', runs[0])
    log = [f for f in os.listdir(run_dir) if f.endswith('.wandb')]
    run = wandb_run_record(os.path.join(run_dir, log[0]))
    recorded[name] = (run.display_name, run.run_group, run.job_type, sorted(run.tags))
  changes = ['loss.label_smoothing=0.1', 'optim.name=rmsprop']
  assert recorded == {name: (name, 'two_rows', name.partition('/')[0],
                             changes if name.startswith('rmsprop') else [])
                      for name in NAMES}


def test_sync_uploads_every_offline_run_with_wandb(tiny_sweep):
  directory, _ = tiny_sweep
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), 'sync',
                         directory, '--dry-run'], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  output = proc.stdout + proc.stderr
  # wandb's own dry run: the four runs it would upload.
  assert 'Would sync 4 run(s)' in output, output
  for name in NAMES:
    assert os.path.join(directory, name, 'wandb', 'offline-run-') in output
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), 'sync',
                         os.path.join(directory, 'nothing')], capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 2 and proc.stderr.startswith('error: no directory')


def test_tensorboard_names_runs_and_lists_the_varying_keys_first(tiny_sweep):
  directory, _ = tiny_sweep
  port = portpicker.pick_unused_port()
  server = subprocess.Popen(
      [os.path.join(os.path.dirname(sys.executable), 'tensorboard'), '--logdir', directory,
       '--host', '127.0.0.1', '--port', str(port), '--reload_interval', '1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    url = f'http://127.0.0.1:{port}'
    runs = _poll(lambda: _get(f'{url}/data/runs'), lambda r: len(r) == len(NAMES))
    assert sorted(runs) == sorted(NAMES)
    experiment = _poll(lambda: _post(f'{url}/data/plugin/hparams/experiment',
                                     {'experimentName': ''}),
                       lambda e: e.get('hparamInfos'))
    keys = [info['name'] for info in experiment['hparamInfos']]
    assert keys[:len(VARYING)] == VARYING
    assert len(keys) > 50                          # the constants follow
    config = rundir.flatten(json.load(open(os.path.join(directory, NAMES[0],
                                                        'config.json'))))
    assert set(keys) == set(config)
    metrics = [m['name']['tag'] for m in experiment['metricInfos']]
    assert metrics[:3] == ['eval/top1_error', 'eval/top5_error', 'eval/loss']
  finally:
    server.terminate()
    server.wait(timeout=60)


def test_log_lines_name_their_run_and_metrics_are_errors_in_percent(tiny_sweep):
  directory, _ = tiny_sweep
  for name in NAMES:
    lines = open(os.path.join(directory, name, 'train.log')).read().splitlines()
    logged = [line for line in lines if re.match(r'\d\d:\d\d:\d\d [A-Z]+ ', line)]
    assert logged and all(f' [{name}] ' in line for line in logged), logged[:3]
    assert any(f'training {name} (factorized stem' in line for line in logged)
    result = json.load(open(os.path.join(directory, name, 'result.json')))
    assert 0 <= result['metrics']['eval/top1_error'] <= 100
    assert 'eval/top1' not in result['metrics']
    # The code that trained it: this checkout's commit (the tests run in one).
    assert result['commit'] == rundir.source_commit()['commit']
    evaluated = [r for r in rundir.read_metrics(os.path.join(directory, name))
                 if 'eval/top1_error' in r]
    assert [r['step'] for r in evaluated] == [2, 4]
  record = json.load(open(os.path.join(directory, 'sweep.json')))
  provenance = record['provenance']
  assert 'sweep' in provenance['command'] and provenance['started']
  assert provenance['commit'] is None or re.fullmatch(r'[0-9a-f]{4,40}', provenance['commit'])


def test_train_progress_bar_and_log_lines_never_share_a_line(tmp_path):
  code, screen = on_terminal([sys.executable, os.path.join(ROOT, 'launch.py'), 'train',
                              '--config', TINY_CONFIG, '--workdir', str(tmp_path / 'run'),
                              '--config.tracking.wandb=false'])
  assert code == 0, screen[-3000:]
  assert re.search(r'6/6 \[', screen)                      # tqdm's bar was drawn
  log_line = re.compile(r'\d\d:\d\d:\d\d INFO \[run\] ')
  assert len(log_line.findall(screen)) >= 6
  assert not shares_a_line(screen, log_line)
  # The time left leaves compilation out: compiling took seconds, but the
  # estimate after step 1 is what 5 more steps take.
  assert re.search(r'compiled the train step in [\d.]+ s', screen)


def test_time_left_comes_from_the_latest_finished_runs():
  progress = sweep.Progress([f'r{i}' for i in range(6)], '/tmp/x', parallel=2,
                            echo=lambda _: None, terminal=False)
  assert progress.seconds_left() is None
  now = time.time()
  for i, seconds in enumerate((100.0, 100.0, 20.0, 20.0)):
    progress.begun[f'r{i}'] = now - seconds
    progress.states[f'r{i}'] = 'done'
    progress.durations.append(seconds)
  # Two runs to go, two at a time, at the latest runs' 20 s (the first two
  # compiled their rows' programs).
  assert progress.seconds_left() == pytest.approx(20.0)
  assert progress.counts() == '4/6 done, 0 running, about 0m20s left'


def wandb_run_record(path):
  """The run record (name, group, job type, tags) of a wandb transaction log,
  parsed with wandb's own protobuf messages. The file is LevelDB's log format
  after wandb's 7-byte header: 32 KiB blocks of chunks, each with a 7-byte
  header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last). wandb
  0.31 reads it only in its Go core, so the framing is read here."""
  from wandb.proto import wandb_internal_pb2
  data = open(path, 'rb').read()
  assert struct.unpack('<4sHB', data[:7])[0] == b':W&B'
  position, pending, block = 7, b'', 32768
  while position + 7 <= len(data):
    left = block - position % block
    if left < 7:                      # a block's tail too short for a header
      position += left
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + 7])
    chunk = data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 2):
      pending = chunk
    elif kind in (3, 4):
      pending += chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record.FromString(pending)
      if record.WhichOneof('record_type') == 'run':
        return record.run
  raise AssertionError(f'no run record in {path}')


def _get(url):
  with urllib.request.urlopen(url, timeout=30) as response:
    return json.load(response)


def _post(url, body):
  request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                   headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.load(response)


def _poll(fetch, done, timeout=120):
  """`fetch()` until `done(result)` (TensorBoard loads the logs after it starts)."""
  deadline, result = time.time() + timeout, None
  while time.time() < deadline:
    try:
      result = fetch()
    except OSError:                   # not listening yet
      result = None
    if result is not None and done(result):
      return result
    time.sleep(1)
  raise AssertionError(f'TensorBoard did not answer in {timeout} s: {result}')
