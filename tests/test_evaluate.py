"""`launch.py eval`: 1, 12 and 144 crops and ensembles (Tables 4 and 5) on a
finished tiny run."""

import json

import numpy as np
import pytest
from helpers import TINY_CONFIG
from flax import nnx

from inception_jax import cli, config_lib, evaluate, train
from inception_jax.data import preprocess


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The tiny run of test_train (the same programs, from JAX's cache)."""
  workdir = str(tmp_path_factory.mktemp('tiny'))
  return workdir, train.run(config_lib.load(TINY_CONFIG, ['eval_every_steps=3']), workdir)


@pytest.mark.xdist_group('evaluate')
@pytest.mark.parametrize('weights, prefix', [('ema', 'eval'), ('raw', 'eval_raw')])
def test_one_crop_is_the_runs_own_evaluation(tiny_run, capsys, weights, prefix):
  workdir, result = tiny_run
  assert cli.main(['eval', '--workdir', workdir, '--weights', weights, '--json']) == 0
  figures = json.loads(capsys.readouterr().out)
  assert figures['top1_error'] == result['metrics'][f'{prefix}/top1_error']
  assert figures['top5_error'] == result['metrics'][f'{prefix}/top5_error']
  assert (figures['crops'], figures['examples'], figures['members']) == (1, 100, [workdir])
  assert cli.main(['eval', '--workdir', workdir, '--weights', weights]) == 0
  assert 'top-1 error' in capsys.readouterr().out


@pytest.mark.xdist_group('evaluate')
@pytest.mark.parametrize('crops', [12, 144])
def test_multi_crop_probabilities_are_the_mean_over_the_promised_views(
    tiny_run, monkeypatch, crops):
  """Each image is seen through `crops` views, and its probabilities are the
  mean of their softmax, computed here directly in numpy."""
  workdir, _ = tiny_run
  member = evaluate.load(workdir)
  seen = []
  original = preprocess.multi_crops
  monkeypatch.setattr(preprocess, 'multi_crops',
                      lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
  probs, labels = evaluate.probabilities([member], crops, limit=3)
  assert probs.shape == (3, 10) and len(seen) == 3
  assert all(views.shape == (crops, 75, 75, 3) for views in seen)
  model = nnx.merge(member.graphdef, member.params, member.stats)
  for image, views in enumerate(seen):
    logits = np.asarray(model(views), np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(probs[image], softmax.mean(0), rtol=1e-5, atol=1e-7)
  assert list(labels) == [evaluate.sources.make_source(member.config.data, 'validation')[i]
                          ['label'] for i in range(3)]


@pytest.mark.xdist_group('evaluate')
def test_an_ensemble_averages_its_members(tiny_run):
  workdir, _ = tiny_run
  ema, raw = evaluate.load(workdir, 'ema'), evaluate.load(workdir, 'raw')
  both, _ = evaluate.probabilities([ema, raw], 12, limit=2)
  alone = [evaluate.probabilities([m], 12, limit=2)[0] for m in (ema, raw)]
  np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-12)
  assert evaluate.evaluate([workdir, workdir], limit=4)['members'] == [workdir, workdir]


def test_eval_mistakes_are_one_line(tmp_path, capsys):
  from inception_jax import rundir
  assert cli.main(['eval', '--workdir', str(tmp_path)]) == 2
  assert 'holds no config.json' in capsys.readouterr().err
  rundir.write_json(str(tmp_path / 'config.json'), config_lib.load(TINY_CONFIG).to_dict())
  with rundir.lock(str(tmp_path / '.lock')):        # a trainer at work in it
    assert cli.main(['eval', '--workdir', str(tmp_path)]) == 2
  assert 'another process is training in' in capsys.readouterr().err
  assert cli.main(['eval', '--workdir', str(tmp_path)]) == 2
  assert 'holds no checkpoint: no weights to evaluate' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(['eval', '--workdir', str(tmp_path), '--crops', '10'])
  # predict: a run or imported weights, not neither and not both.
  for args in (['x.png'], ['--workdir', str(tmp_path), '--weights', 'w.pt', 'x.png']):
    assert cli.main(['predict', *args]) == 2
    assert 'predict takes a run (--workdir RUN' in capsys.readouterr().err
  assert cli.main(['predict', '--weights', str(tmp_path / 'missing.pt'), 'x.png']) == 2
  assert 'cannot read the PyTorch file' in capsys.readouterr().err


def test_runs_of_earlier_versions_are_read_with_todays_keys():
  """A config.json written before keys were added (or a value's type changed)
  reads as the config those runs had in effect."""
  from inception_jax import rundir
  current = config_lib.load('configs/inception_v3.py:scale=demo').to_dict()
  old = json.loads(json.dumps(current))
  old.pop('config_version', None)            # recorded before config versions
  del old['data']['crop_sampler'], old['data']['object_size'], old['optim']['grad_accum_steps']
  old['data']['color_distort'] = False
  read = rundir.as_current(old)
  assert read['data']['crop_sampler'] == 'uniform_area' and read['data']['color_distort'] == 'none'
  assert read['data']['object_size'] == [0.16, 0.26]        # the old runs' objects
  assert read['optim']['grad_accum_steps'] == 1
  assert rundir.changed_keys(read, old) == []


@pytest.mark.xdist_group('evaluate')
def test_predict_names_the_top_5_classes(tiny_run, tmp_path, capsys):
  """Image files → the run's top 5 classes (names from its dataset), in the
  order of the network's own probabilities for the evaluation crop."""
  from PIL import Image
  from inception_jax.data import synthetic
  workdir, _ = tiny_run
  paths = []
  for label in (0, 3):
    paths.append(str(tmp_path / f'class_{label}.png'))
    Image.fromarray(synthetic.render(label, 86, np.random.default_rng(label))).save(paths[-1])
  assert cli.main(['predict', '--workdir', workdir, '--json', *paths]) == 0
  predictions = json.loads(capsys.readouterr().out)
  member = evaluate.load(workdir)
  model = nnx.merge(member.graphdef, member.params, member.stats)
  names = evaluate.sources.make_source(member.config.data, 'train').class_names()
  assert len(names) == 10 and names[0] == ' '.join(map(str, synthetic.class_parts(0)))
  for path, prediction in zip(paths, predictions):
    image = preprocess.eval_image(open(path, 'rb').read(),
                                  evaluate.pipeline.options(member.config.data))
    logits = np.asarray(model(image[None]))[0]
    assert prediction['image'] == path and len(prediction['classes']) == 5
    assert prediction['classes'][0] == names[int(np.argmax(logits))]
    assert prediction['probabilities'] == sorted(prediction['probabilities'], reverse=True)
    assert 0 < sum(prediction['probabilities']) <= 1 + 1e-9
  assert cli.main(['predict', '--workdir', workdir, *paths]) == 0
  assert paths[0] in capsys.readouterr().out
  assert cli.main(['predict', '--workdir', workdir, str(tmp_path / 'missing.png')]) == 2
  assert 'cannot read' in capsys.readouterr().err


@pytest.mark.xdist_group('evaluate')
def test_weights_come_without_an_optimizer_or_the_data(tiny_run, tmp_path, monkeypatch):
  """A run's weights are read from its checkpoint alone (Orbax's partial
  restore): the arrays the whole train state holds, the class names from
  classes.json. A run written before classes.json takes them from its
  dataset's description, as it named them then."""
  import os
  import shutil
  import jax
  from inception_jax import checkpointing, optim, parallel, rundir, specs, trainstate
  from inception_jax.data import sources
  workdir, _ = tiny_run
  config = specs.RunSpec.from_config(rundir.RunDir(workdir).read_config())
  names = sources.make_source(config.data, 'train').class_names()
  # The whole state, as a resumed run restores it (optimizer state included).
  tx = optim.make_optimizer(config.optim, steps_per_epoch=1.0, global_batch=config.batch_size)
  init, _ = trainstate.trace_init(config, config.model_spec(len(names)), config.data.image_size,
                                  tx, parallel.replicated(parallel.data_mesh()))
  with checkpointing.CheckpointManager(workdir, every_steps=0, keep=1) as checkpoints:
    state = checkpoints.restore(init.out_info)[0]

  def not_needed(*args, **kwargs):
    raise AssertionError('reading weights built an optimizer or a data source')
  monkeypatch.setattr(optim, 'make_optimizer', not_needed)
  monkeypatch.setattr(sources, 'make_source', not_needed)
  for weights, whole in (('ema', (state.ema_params, state.ema_batch_stats)),
                         ('raw', (state.params, state.batch_stats))):
    member = trainstate.restore_weights(workdir, weights)
    assert member.class_names == names
    for read, kept in zip((member.params, member.stats), whole):
      assert jax.tree.structure(read) == jax.tree.structure(kept)
      assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(read),
                                                      jax.tree.leaves(kept)))
  earlier = tmp_path / 'earlier'
  shutil.copytree(workdir, earlier)
  os.remove(earlier / rundir.CLASSES)
  assert trainstate.restore_weights(str(earlier)).class_names == names


@pytest.mark.xdist_group('evaluate')
def test_a_split_the_dataset_lacks_is_one_line_naming_those_it_has(tiny_run, capsys):
  """The synthetic source takes any name but the training split's for its
  evaluation split: a typo in --split evaluated that split and exited 0."""
  workdir, _ = tiny_run
  assert cli.main(['eval', '--workdir', workdir, '--split', 'valdation']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'Traceback' not in err
  assert err.startswith('error: ') and "no split 'valdation'" in err
  assert "it has 'train', 'validation'" in err


def test_a_folder_split_the_dataset_lacks_names_the_folders(tmp_path):
  import ml_collections
  for split in ('train', 'validation', '.hidden'):
    (tmp_path / split / 'cat').mkdir(parents=True)
  data = ml_collections.ConfigDict(dict(name='folder', path=str(tmp_path)))
  evaluate._check_split(data, 'validation')
  with pytest.raises(evaluate.ConfigError, match="no split 'val'; it has 'train', 'validation'$"):
    evaluate._check_split(data, 'val')


@pytest.mark.parametrize('limit', ['0', '-3'])
def test_a_limit_below_one_is_one_line(tmp_path, capsys, limit):
  """Checked before the runs are read: no run is needed."""
  assert cli.main(['eval', '--workdir', str(tmp_path), '--limit', limit]) == 2
  err = capsys.readouterr().err
  assert err == f'error: --limit must be a number of examples >= 1, got {limit}\n'


def _read_only_commands(sweep: str, image: str) -> list:
  """eval, predict and compare (text, then html) of the run SWEEP/tiny, each
  as [exit status, stdout, stderr]."""
  import contextlib
  import io
  results = []
  for args in (['eval', '--workdir', f'{sweep}/tiny', '--json'],
               ['predict', '--workdir', f'{sweep}/tiny', '--json', image],
               ['compare', sweep], ['compare', sweep, '--format', 'html']):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli.main(args)
    results.append([code, out.getvalue(), err.getvalue()])
  return results


def _can_mount_read_only(tmp_path) -> bool:
  """Whether `unshare --mount` may bind-mount a directory read-only here
  (root with CAP_SYS_ADMIN, as in CI's containers)."""
  import shlex
  import shutil
  import subprocess
  probe = shlex.quote(str(tmp_path / 'probe'))
  (tmp_path / 'probe').mkdir()
  try:
    return shutil.which('unshare') is not None and subprocess.run(
        ['unshare', '--mount', 'sh', '-c', f'mount --bind {probe} {probe} && '
         f'mount -o remount,bind,ro {probe} && ! touch {probe}/x 2>/dev/null'],
        capture_output=True, timeout=60).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


@pytest.mark.xdist_group('evaluate')
def test_a_read_only_run_can_be_evaluated_predicted_and_compared(
    tiny_run, tmp_path, monkeypatch, capsys):
  """A run on a read-only filesystem (an archive, a colleague's runs) has no
  trainer writing in it: eval and predict read it without its lock. Tests
  run as root, whom permissions do not stop, so the copy of the tiny run is
  made read-only by a real read-only bind mount, in a mount namespace of a
  process of its own (`unshare --mount`, nothing left mounted whatever
  happens) that runs the commands; where mounting is not allowed, the lock
  fails with EROFS as it does there (monkeypatched) and the commands run in
  this process."""
  import errno
  import os
  import shlex
  import shutil
  import subprocess
  import sys
  from PIL import Image
  from helpers import ROOT, cli_environment as _cli_environment
  from inception_jax import rundir
  from inception_jax.data import synthetic
  workdir, result = tiny_run
  sweep = tmp_path / 'archive'
  shutil.copytree(workdir, sweep / 'tiny')
  image = str(tmp_path / 'class_3.png')
  Image.fromarray(synthetic.render(3, 86, np.random.default_rng(3))).save(image)
  mounted = _can_mount_read_only(tmp_path)
  if mounted:
    where = shlex.quote(str(sweep))
    program = (f'import json, sys; sys.path.insert(0, {os.path.join(ROOT, "tests")!r}); '
               f'from test_evaluate import _read_only_commands; '
               f'print(json.dumps(_read_only_commands({str(sweep)!r}, {image!r})))')
    proc = subprocess.run(
        ['unshare', '--mount', 'sh', '-c', f'mount --bind {where} {where} && '
         f'mount -o remount,bind,ro {where} && exec "$0" -c "$1"', sys.executable, program],
        cwd=ROOT, env=_cli_environment(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
  else:
    def read_only(path):
      raise OSError(errno.EROFS, 'Read-only file system', path)
    monkeypatch.setattr(rundir, 'lock', read_only)
    results = _read_only_commands(str(sweep), image)
  (code, out, err), (pcode, pout, _), (ccode, cout, _), (hcode, _, herr) = results
  assert code == 0, err
  figures = json.loads(out)
  assert figures['top1_error'] == result['metrics']['eval/top1_error']
  assert pcode == 0 and len(json.loads(pout)[0]['classes']) == 5
  assert ccode == 0 and 'tiny' in cout
  if mounted:                  # html writes report.html: not here
    assert hcode == 2 and herr.startswith('error: cannot write') and herr.count('\n') == 1
