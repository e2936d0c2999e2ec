"""Early stopping inside the trainer (issue 33, item 2): a search trial
(`train --search-trial JOURNAL#N`) reports each evaluation's objective to its
Optuna study; when the study's pruner stops it, the run saves, records state
`pruned` and exits 7. The studies here are made as the search driver makes
them (a journal file, study `search`, the user attributes `objective`,
`direction` and `pruner`), without the driver."""

import os
import re
import warnings

import jax
import optuna
import pytest
from helpers import TINY_CONFIG

from inception_jax import checkpointing, pruning, rundir, sweep
from inception_jax.errors import ConfigError, ExitCode, UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

# 6 steps, evaluated every 2: the rungs of a pruner with min_steps 2.
TRIAL_ARGS = ('--config.total_steps=6', '--config.eval_every_steps=2',
              '--config.checkpoint_every_steps=0')


def make_study(tmp_path, pruner, objective='eval/top1_error', direction='minimize'):
  """The study of a search directory, as the driver creates it."""
  journal = str(tmp_path / 'study.journal')
  study = optuna.create_study(study_name=pruning.STUDY, storage=pruning.storage(journal),
                              direction=direction, pruner=pruning.make_pruner(pruner))
  study.set_user_attr('objective', objective)
  study.set_user_attr('direction', direction)
  study.set_user_attr('pruner', pruner)
  return journal, study


def train_trial(cli_main, workdir, journal, number):
  return cli_main('train', '--config', TINY_CONFIG, '--workdir', workdir, *TRIAL_ARGS,
                  '--search-trial', f'{journal}#{number}')


def eval_rows(workdir):
  return {row['step']: row for row in rundir.read_metrics(str(workdir))
          if 'eval/top1_error' in row}


def test_a_trial_the_pruner_stops_exits_early_with_its_checkpoint(tmp_path, cli_main):
  pruner = dict(name='successive_halving', min_steps=2, reduction_factor=3)
  journal, study = make_study(tmp_path, pruner)
  leader = study.ask()          # a trial that reached the first rung at 0 % error
  leader.report(0.0, 2)
  assert not leader.should_prune()
  study.tell(leader, 0.0)
  trial = study.ask()
  workdir = tmp_path / 'trial_001'

  code, out, err = train_trial(cli_main, workdir, journal, trial.number)

  assert code == ExitCode.PRUNED == 7, err
  result = rundir.RunDir(str(workdir)).read_result()
  error = eval_rows(workdir)[2]['eval/top1_error']
  assert out.strip().splitlines()[-1].startswith(
      f'pruned at step 2 (eval/top1_error {error:.4g}); saved a checkpoint in')
  assert 'error:' not in err
  assert (result['state'], result['pruned_at_step'], result['steps']) == ('pruned', 2, 2)
  assert result['metrics']['eval/top1_error'] == error
  assert sorted(eval_rows(workdir)) == [2]             # no step trained past the rung
  frozen = study.trials[trial.number]
  assert frozen.intermediate_values == {2: error}
  assert frozen.user_attrs[pruning.PRUNED_AT] == 2
  # The checkpoint of the pruned step, whole: its checksums verify and its
  # state reads back at step 2.
  with checkpointing.CheckpointManager(str(workdir), every_steps=0, keep=3) as manager:
    assert manager.all_steps() == [2]
    state, data_state, _ = manager.restore(
        {'step': jax.ShapeDtypeStruct((), jax.numpy.int32)})
  assert int(state['step']) == 2 and data_state is None
  # The sweep machinery sees a pruned trial, not a failed one.
  outcome = sweep._outcome(code, str(workdir))
  assert (outcome.state, outcome.message) == ('pruned', 'pruned at step 2')
  assert sweep.exit_code([outcome]) == ExitCode.OK

  # Run again (a relaunched trial): it is finished, trains and reports nothing.
  metrics = open(rundir.RunDir(str(workdir)).metrics).read()
  code, out, err = train_trial(cli_main, workdir, journal, trial.number)
  assert code == ExitCode.PRUNED, err
  assert out.strip().splitlines()[-1].startswith('pruned at step 2')
  assert open(rundir.RunDir(str(workdir)).metrics).read() == metrics
  assert rundir.RunDir(str(workdir)).read_result() == result
  assert study.trials[trial.number].intermediate_values == {2: error}


def test_a_trial_not_pruned_trains_to_the_end_reporting_every_evaluation(tmp_path,
                                                                         cli_main):
  pruner = dict(name='hyperband', min_steps=2, max_steps=6, reduction_factor=3)
  journal, study = make_study(tmp_path, pruner)
  trial = study.ask()           # alone in the study: every rung promotes it
  workdir = tmp_path / 'trial_000'

  code, out, err = train_trial(cli_main, workdir, journal, trial.number)

  assert code == 0, err
  result = rundir.RunDir(str(workdir)).read_result()
  assert 'state' not in result and result['steps'] == 6
  rows = eval_rows(workdir)
  assert sorted(rows) == [2, 4, 6]
  assert study.trials[trial.number].intermediate_values == {
      step: row['eval/top1_error'] for step, row in rows.items()}
  assert result['metrics']['eval/top1_error'] == rows[6]['eval/top1_error']
  assert pruning.PRUNED_AT not in study.trials[trial.number].user_attrs


def test_a_relaunched_trial_reports_no_step_twice(tmp_path):
  """The driver was killed and relaunches the trial, which resumes from its
  checkpoint and evaluates steps it reported before: Optuna keeps the first
  value and warns at a second report, so they are not reported again."""
  journal, study = make_study(tmp_path, dict(name='none'))
  trial = study.ask()
  trial.report(40.0, 2)
  trial.report(30.0, 4)
  reporter = pruning.TrialReporter(journal, trial.number)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert reporter.report(2, {'eval/top1_error': 41.0}) is False
    assert reporter.report(4, {'eval/top1_error': 31.0}) is False
    assert reporter.report(6, {'eval/top1_error': 20.0}, last=True) is False
  assert study.trials[trial.number].intermediate_values == {2: 40.0, 4: 30.0, 6: 20.0}


def test_a_decision_to_prune_holds_for_a_relaunch(tmp_path):
  """Killed between the pruner's decision and its result.json, the trial
  stops at the same step when it runs again (the pruner, asked once more,
  would have moved on to its next rung)."""
  journal, study = make_study(tmp_path, dict(name='successive_halving', min_steps=2))
  leader = study.ask()
  leader.report(0.0, 2)
  leader.should_prune()
  study.tell(leader, 0.0)
  trial = study.ask()
  assert pruning.TrialReporter(journal, trial.number).report(2, {'eval/top1_error': 50.0})
  relaunched = pruning.TrialReporter(journal, trial.number)
  assert relaunched.report(2, {'eval/top1_error': 50.0}) is True
  assert study.trials[trial.number].intermediate_values == {2: 50.0}


def test_the_objective_and_direction_come_from_the_study(tmp_path):
  journal, study = make_study(tmp_path, dict(name='median', min_steps=2, startup_trials=1),
                              objective='eval/top5_error', direction='maximize')
  done = study.ask()
  done.report(10.0, 2)
  study.tell(done, 10.0)
  trial = study.ask()
  reporter = pruning.TrialReporter(journal, trial.number)
  assert (reporter.objective, reporter.direction) == ('eval/top5_error', 'maximize')
  # Maximized: 20 beats the median 10, 5 does not.
  assert not reporter.report(2, {'eval/top1_error': 99.0, 'eval/top5_error': 20.0})
  worse = pruning.TrialReporter(journal, study.ask().number)
  assert worse.report(2, {'eval/top1_error': 0.0, 'eval/top5_error': 5.0})
  with pytest.raises(UserError, match=r"^the search objective 'eval/top5_error' is not "
                                      r"among the evaluation metrics \(eval/loss\)$"):
    reporter.value({'eval/loss': 1.0})


def test_a_finished_trial_takes_no_more_reports(tmp_path):
  journal, study = make_study(tmp_path, dict(name='none'))
  trial = study.ask()
  study.tell(trial, 12.0)
  reporter = pruning.TrialReporter(journal, trial.number)
  with pytest.raises(UserError, match=r'^trial 0 of .*study\.journal is COMPLETE in the '
                                      r'study already: it takes no more reports'):
    reporter.report(2, {'eval/top1_error': 10.0})


def test_only_the_first_process_talks_to_the_study(tmp_path):
  """Another process's reporter opens nothing (not even a missing journal)."""
  reporter = pruning.TrialReporter(str(tmp_path / 'none.journal'), 3, enabled=False)
  assert reporter.report(2, {'eval/top1_error': 50.0}) is False
  assert not os.path.exists(tmp_path / 'none.journal')


@pytest.mark.parametrize('arg, says', [
    ('study.journal', r"--search-trial takes JOURNAL#NUMBER .*got 'study\.journal'"),
    ('study.journal#x', r"--search-trial takes JOURNAL#NUMBER .*got 'study\.journal#x'"),
    ('{tmp}/missing.journal#0', r'--search-trial: no study journal at .*missing\.journal'),
    ('{tmp}/study.journal#5', r"--search-trial .*study\.journal#5: the journal holds no "
                              r"study 'search' with a trial 5"),
])
def test_a_wrong_search_trial_is_one_line(tmp_path, cli_main, arg, says):
  make_study(tmp_path, dict(name='none'))[1].ask()
  arg = arg.format(tmp=tmp_path)
  code, out, err = cli_main('train', '--config', TINY_CONFIG, '--workdir',
                            tmp_path / 'run', '--search-trial', arg)
  assert code == ExitCode.USER_ERROR
  assert err.count('\n') == 1 and err.startswith('error: '), err
  assert re.search(says, err), err
  assert not os.path.exists(tmp_path / 'run')


# --- The pruner and the sampler from their descriptions -----------------------------

def _first_pruned_step(study, value, steps=20):
  """A trial reporting value(step) at steps 1 … `steps`: the step its pruner
  stopped it at, or None."""
  trial = study.ask()
  for step in range(1, steps + 1):
    trial.report(value(step), step)
    if trial.should_prune():
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      return step
  study.tell(trial, value(steps))
  return None


@pytest.mark.parametrize('pruner, rungs, pruned', [
    # Successive halving: rungs at 2·3^k; the second trial (worse) stops at
    # the first rung, the third (better up to step 5, then worse) at the second.
    (dict(name='successive_halving', min_steps=2, reduction_factor=3), [2, 6, 18], [2, 6]),
    # Hyperband: the same rungs, brackets starting at each of them.
    (dict(name='hyperband', min_steps=2, max_steps=20, reduction_factor=3), [2, 6, 18],
     None),
    # Median: from min_steps on, every evaluation; a trial's best value counts.
    (dict(name='median', min_steps=2, startup_trials=1), list(range(2, 21, 2)), [2, None]),
    (dict(name='none'), [], [None, None]),
])
def test_make_pruner_builds_each_pruner_with_its_rungs(pruner, rungs, pruned):
  assert pruning.rungs(pruner, 20) == rungs
  study = optuna.create_study(pruner=pruning.make_pruner(pruner))
  assert _first_pruned_step(study, lambda step: 10.0) is None       # the leader
  stopped = [_first_pruned_step(study, lambda step: 50.0),
             _first_pruned_step(study, lambda step: 5.0 if step < 6 else 80.0)]
  stopped += [_first_pruned_step(study, lambda step, k=k: 11.0 + k) for k in range(12)]
  if pruned is not None:
    assert stopped[:2] == pruned
  # Stopped only on a rung, never between two.
  assert {s for s in stopped if s is not None} <= set(rungs)
  assert any(stopped) == bool(rungs)


def test_hyperband_takes_its_length_from_the_first_finished_trial_when_unknown():
  """A dataset whose size is known only once a run opens it: max_steps 'auto'."""
  pruner = pruning.make_pruner(dict(name='hyperband', min_steps=2, max_steps='auto'))
  study = optuna.create_study(pruner=pruner)
  assert _first_pruned_step(study, lambda step: 10.0) is None
  stopped = [_first_pruned_step(study, lambda step, k=k: 11.0 + k) for k in range(12)]
  assert any(stopped) and {s for s in stopped if s is not None} <= {2, 6, 18}


@pytest.mark.parametrize('pruner, says', [
    (dict(name='asha', min_steps=2), r"^pruner 'asha' is not one of hyperband, "
                                     r"successive_halving, median, none$"),
    (dict(name='hyperband', min_steps=2), r'^hyperband needs max_steps \(an integer >= 2\)$'),
    (dict(name='successive_halving', min_steps=0),
     r'^successive_halving: min_steps must be an integer >= 1, got 0$'),
    (dict(name='hyperband', min_steps=4, max_steps=2),
     r'^hyperband: max_steps must be an integer >= 4, got 2$'),
    (dict(name='median', min_steps=2, reduction_factor=1),
     r'^median: reduction_factor must be an integer >= 2, got 1$'),
    (dict(name='median', min_steps=2, patience=3),
     r"^pruner 'median': unknown key\(s\) patience; it takes name, min_steps, "),
])
def test_make_pruner_refuses_a_wrong_description_in_one_line(pruner, says):
  with pytest.raises(ConfigError, match=says) as raised:
    pruning.make_pruner(pruner)
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('name', pruning.SAMPLERS)
def test_make_sampler_repeats_its_suggestions_for_a_seed(name):
  space = {'lr': [0.01, 0.1, 1.0], 'smoothing': [0.0, 0.1]}
  described = dict(name=name, seed=3, startup_trials=2,
                   **({'search_space': space} if name == 'grid' else {}))

  def suggestions():
    study = optuna.create_study(sampler=pruning.make_sampler(described))
    values = []
    for _ in range(5):
      trial = study.ask()
      values.append((trial.suggest_categorical('lr', space['lr']),
                     trial.suggest_categorical('smoothing', space['smoothing'])))
      study.tell(trial, values[-1][0] + values[-1][1])
    return values
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')      # CMA-ES samples categoricals independently
    assert suggestions() == suggestions()


def test_make_sampler_refuses_a_wrong_description_in_one_line():
  with pytest.raises(ConfigError, match=r"^sampler 'bayes' is not one of tpe, random, "
                                        r"grid, cmaes$"):
    pruning.make_sampler(dict(name='bayes'))
  with pytest.raises(ConfigError, match=r"^sampler grid needs search_space"):
    pruning.make_sampler(dict(name='grid'))
  with pytest.raises(ConfigError, match=r'^tpe: startup_trials must be an integer >= 0'):
    pruning.make_sampler(dict(name='tpe', startup_trials=-1))
