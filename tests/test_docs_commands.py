"""The README and the docs pages stay true to the code.

- Every shell command in their ```bash blocks is checked: the cheap ones run
  (`--help`, `--version`, `cost`, `layout`, and `train`/`sweep`/`search` with
  `--dry-run` added), the others are parsed by their own argparse parser
  (unknown flags, bad choices, a missing argument fail), `make` targets exist,
  `pip install` extras exist, shell scripts exist and parse (`bash -n`); a
  program this project does not ship must be listed in EXTERNAL.
- Every block under `<!-- printed by: COMMAND -->` is what COMMAND prints now,
  character for character (`(with PATH from FIXTURE)`: PATH is a copy of the
  repository's FIXTURE, such as the demo's recorded runs). Every other block or
  table introduced as printed carries such a line, or `<!-- measured: … -->`
  for timings that only a long run reproduces.
- The presets table is what `cost` counts, and the README's model example runs.

Each check returns a line naming the page, its line and what broke, so a
broken documented command fails here (the tests at the end plant some)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from inception_jax import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
# What a documented command finds in its working directory, a temporary one
# (links to the checkout's inputs), so that nothing it writes lands in the
# repository.
INPUTS = ('configs', 'sweeps', 'searches', 'benchmarks', 'scripts', 'launch.py',
          'notebooks')
# Programs the docs name that this project does not ship: checked by their own
# projects, not here.
EXTERNAL = {
    'optuna-dashboard': "Optuna's dashboard, reading the study journal",
    'tensorboard': "TensorBoard's server",
    'wandb': "wandb's own command line",
}
# Commands that run: cheap on a CPU (a config loaded, a network traced).
RUN = {'cost', 'layout'}
DRY_RUN = {'train', 'sweep', 'search'}

FENCE = re.compile(r'^```(?P<lang>\w*)\n(?P<body>.*?)^```', re.S | re.M)
PRINTED = re.compile(
    r'<!-- printed by: (?P<cmd>.+?)(?: \(with (?P<dst>\S+) from (?P<src>\S+)\))? -->\n\n?'
    r'```\w*\n(?P<block>.*?)^```', re.S | re.M)
MEASURED = re.compile(r'<!-- measured: (?P<what>.+?) -->')
PLACEHOLDER = re.compile(r'(?<![\w.-])(?:NAME|ARG|DIR|FILE|RUN|K|M|N)(?![\w-])')
NOT_PREPARED = re.compile(r"TFDS dataset '(\w+)' is not prepared")


@dataclass(frozen=True)
class Command:
  page: str
  line: int
  text: str

  def __str__(self):
    return f'{self.page}:{self.line}: {self.text}'


def _expand_options(words: list[str]) -> list[list[str]]:
  """`[--format text|markdown]` → each alternative, brackets dropped: the
  docs' notation for optional arguments, checked in full."""
  opening = next((i for i, w in enumerate(words) if w.startswith('[-')), None)
  if opening is None:
    return [words]
  closing = next(i for i in range(opening, len(words)) if words[i].endswith(']'))
  inner = [w.strip('[]') for w in words[opening:closing + 1]]
  choice = next((i for i, w in enumerate(inner) if '|' in w), None)
  variants = ([inner[:choice] + [a] + inner[choice + 1:] for a in inner[choice].split('|')]
              if choice is not None else [inner])
  return [expanded for variant in variants
          for expanded in _expand_options(words[:opening] + variant + words[closing + 1:])]


def shell_commands(text: str, page: str) -> list[Command]:
  """The commands of TEXT's bash blocks, continuation lines joined, comments
  and optional-argument brackets resolved, `$VAR` from the block's
  assignments."""
  commands = []
  for fence in FENCE.finditer(text):
    if fence.group('lang') not in ('bash', 'sh', 'shell'):
      continue
    start = text.count('\n', 0, fence.start('body')) + 1
    variables, pending, first = {}, '', None
    for offset, line in enumerate(fence.group('body').splitlines()):
      first = start + offset if not pending else first
      if line.rstrip().endswith('\\'):
        pending += line.rstrip()[:-1] + ' '
        continue
      logical, pending = pending + line, ''
      for name, value in variables.items():
        logical = logical.replace(f'${name}', value)
      words = shlex.split(logical, comments=True)
      if not words:
        continue
      if all(re.fullmatch(r'[A-Z_]+=\S*', w) for w in words):
        variables.update(w.split('=', 1) for w in words)
        continue
      while words and re.fullmatch(r'[A-Z_]+=\S*', words[0]):
        words.pop(0)                  # the environment of one command
      if words[-1] == '&':
        words.pop()
      commands += [Command(page, first, shlex.join(w)) for w in _expand_options(words)]
  return commands


def all_commands() -> list[Command]:
  return [c for page in PAGES
          for c in shell_commands(page.read_text(), str(page.relative_to(REPO)))]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
  """A directory holding the checkout's inputs (linked) and the demo's
  recorded runs at runs/table3_demo, where documented commands run."""
  root = tmp_path_factory.mktemp('docs_commands')
  for name in INPUTS:
    (root / name).symlink_to(REPO / name)
  return root


class Parsed(Exception):
  """Raised in place of running a command once argparse accepted it."""


def _run_cli(args: list[str], parse_only: bool) -> tuple[int, str, str]:
  """`cli.main(args)` in this process: (status, stdout, stderr); with
  parse_only, status 0 once argparse accepted the arguments."""
  out, err = io.StringIO(), io.StringIO()
  original = argparse.ArgumentParser.parse_args

  def parse_then_stop(self, *a, **k):
    original(self, *a, **k)
    raise Parsed

  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      if parse_only:
        argparse.ArgumentParser.parse_args = parse_then_stop
      code = cli.main(args, prog='python launch.py')
    except Parsed:
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      argparse.ArgumentParser.parse_args = original
  return code, out.getvalue(), err.getvalue()


# Parses a script's arguments with its own parser, then stops: its work (a
# benchmark, a browser) is not what the docs test.
PARSE_SCRIPT = '''
import argparse, runpy, sys
original = argparse.ArgumentParser.parse_args
def parse_then_stop(self, *a, **k):
  original(self, *a, **k)
  raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _project_args(words: list[str]) -> list[str] | None:
  """The command line's arguments when WORDS start this project's CLI."""
  if words[0] == 'inception-jax':
    return words[1:]
  if Path(words[0]).name.startswith('python'):
    if words[1:2] == ['launch.py']:
      return words[2:]
    if words[1:3] == ['-m', 'inception_jax']:
      return words[3:]
  return None


def check(command: Command, workspace: Path) -> str | None:
  """None when COMMAND works as documented, else a line saying why not."""
  words = shlex.split(command.text)
  args = _project_args(words)
  with contextlib.chdir(workspace):
    if args is not None:
      return _check_cli(command, args)
    if words[0] == 'make':
      result = subprocess.run(['make', '-n', '-C', str(REPO), *words[1:]],
                              capture_output=True, text=True)
      return (None if result.returncode == 0 else
              f'{command}: {result.stderr.strip().splitlines()[-1]}')
    if words[:2] == ['pip', 'install']:
      return _check_pip(command, words[2:])
    if Path(words[0]).name.startswith('python') and words[1].endswith('.py'):
      if not (REPO / words[1]).is_file():
        return f'{command}: no file {words[1]} in the repository'
      result = subprocess.run([sys.executable, '-c', PARSE_SCRIPT, *words[1:]],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
      return (None if result.returncode == 0 else
              f'{command}: {(result.stderr.strip() or "failed").splitlines()[-1]}')
    if words[0] == 'bash' and words[1].endswith('.sh'):
      # A shell script of the repository: present and well-formed (`bash -n`);
      # what it does (fetch wheels, measure a GPU) is its own tests' subject.
      if not (REPO / words[1]).is_file():
        return f'{command}: no file {words[1]} in the repository'
      result = subprocess.run(['bash', '-n', str(REPO / words[1])], capture_output=True,
                              text=True)
      return None if result.returncode == 0 else f'{command}: {result.stderr.strip()}'
    if words[0] in EXTERNAL:
      return None
  return f'{command}: not a command of this project (add it to EXTERNAL if it is another\'s)'


def _check_cli(command: Command, args: list[str]) -> str | None:
  subcommand = next((a for a in args if not a.startswith('-')), None)
  # A synopsis (`searches/NAME.py:ARG`, `--top M`) names no real file: parsed only.
  synopsis = any(PLACEHOLDER.search(a) for a in args if not a.startswith('-'))
  runs = not synopsis and ('--help' in args or '--version' in args or
                           subcommand in RUN or subcommand in DRY_RUN)
  if runs and subcommand in DRY_RUN and '--dry-run' not in args:
    args = [*args, '--dry-run']
  code, _, err = _run_cli(args, parse_only=not runs)
  message = (err.strip() or 'no message').splitlines()[-1]
  unprepared = NOT_PREPARED.search(message)
  if code == 0 or (unprepared and f'prepare {unprepared.group(1)}' in _page_text(command)):
    return None     # ok, or data its page first prepares (ImageNet: not on this machine)
  return f'{command}: exit status {code}: {message}'


def _page_text(command: Command) -> str:
  path = REPO / command.page
  return path.read_text() if path.is_file() else ''


def _check_pip(command: Command, specs: list[str]) -> str | None:
  extras = set(tomllib.loads((REPO / 'pyproject.toml').read_text())
               ['project']['optional-dependencies'])
  for spec in specs:
    match = re.fullmatch(r'\.(?:\[(?P<extras>[\w,-]+)\])?', spec)
    if not match and spec in EXTERNAL:
      continue
    if not match:
      return f'{command}: installs {spec}, neither this checkout nor a program in EXTERNAL'
    unknown = set((match.group('extras') or '').split(',')) - extras - {''}
    if unknown:
      return f'{command}: no extra {", ".join(sorted(unknown))} in pyproject.toml'
  return None


def printed_blocks(text: str, page: str) -> list[tuple[Command, str | None, str | None, str]]:
  return [(Command(page, text.count('\n', 0, m.start()) + 1, m.group('cmd')),
           m.group('dst'), m.group('src'), m.group('block'))
          for m in PRINTED.finditer(text)]


def check_printed(command: Command, dst: str | None, src: str | None, block: str,
                  workspace: Path) -> str | None:
  """None when BLOCK is what COMMAND prints now, else the first line that differs."""
  args = _project_args(shlex.split(command.text))
  if args is None:
    return f'{command}: only commands of this project can be checked'
  if dst:
    target = workspace / dst
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / src, target)
  with contextlib.chdir(workspace):
    code, out, err = _run_cli(args, parse_only=False)
  if code != 0:
    return f'{command}: exit status {code}: {err.strip()}'
  printed = [line.rstrip() for line in out.rstrip('\n').splitlines()]
  documented = [line.rstrip() for line in block.rstrip('\n').splitlines()]
  for number, (now, then) in enumerate(zip(printed, documented)):
    if now != then:
      return (f'{command} (line {command.line + 2 + number}): the page shows\n  {then}\n'
              f'but the code prints\n  {now}')
  if len(printed) != len(documented):
    return (f'{command}: the page shows {len(documented)} lines, the code prints '
            f'{len(printed)}')
  return None


def unmarked_printed(text: str, page: str) -> list[str]:
  """Blocks and tables that a page introduces as printed (the paragraph
  before them says so and ends with ':') without a printed-by or measured
  line."""
  problems = []
  paragraphs = re.split(r'\n\s*\n', text)
  for before, after in zip(paragraphs, paragraphs[1:]):
    body = after.lstrip()
    is_output = (body.startswith('```') and not re.match(r'```(bash|sh|shell|python)', body)
                 or body.startswith('|'))
    lines = before.strip().splitlines()
    marked = lines[-1].startswith(('<!-- printed by:', '<!-- measured:'))
    prose = '\n'.join(line for line in lines if not line.startswith('<!--'))
    # "prints …:" or "printed …:" ending the paragraph; "as printed" is the paper's.
    said = re.search(r'(?<!as )\bprint(s|ed)\b[^.]*:\s*$', prose, re.S)
    if is_output and said and not marked:
      problems.append(f'{page}:{text.count(chr(10), 0, text.index(before)) + 1}: '
                      f'a block said to be printed without <!-- printed by: COMMAND -->')
  return problems


# --- The pages as they are ----------------------------------------------------

COMMANDS = all_commands()


@pytest.mark.parametrize('command', COMMANDS, ids=str)
def test_documented_command_works(command, workspace):
  assert check(command, workspace) is None, check(command, workspace)


def test_the_readme_commands_are_all_found():
  """The README's install and two commands are among those checked."""
  readme = {c.text for c in COMMANDS if c.page == 'README.md'}
  assert {'make demo', 'make test', 'pip install .'} <= readme


PRINTED_BLOCKS = [block for page in PAGES
                  for block in printed_blocks(page.read_text(), str(page.relative_to(REPO)))]


@pytest.mark.parametrize('command, dst, src, block', PRINTED_BLOCKS,
                         ids=[str(b[0]) for b in PRINTED_BLOCKS])
def test_printed_block_is_what_the_code_prints(command, dst, src, block, workspace):
  problem = check_printed(command, dst, src, block, workspace)
  assert problem is None, problem


def test_the_readme_demo_table_is_checked():
  assert any(c.page == 'README.md' and 'compare' in c.text for c, *_ in PRINTED_BLOCKS)


def test_every_block_said_to_be_printed_is_marked():
  problems = [p for page in PAGES
              for p in unmarked_printed(page.read_text(), str(page.relative_to(REPO)))]
  assert not problems, '\n'.join(problems)


def test_every_measured_block_names_its_command_and_commit():
  for page in PAGES:
    for match in MEASURED.finditer(page.read_text()):
      assert re.search(r'`[^`]+`.* at [0-9a-f]{7}', match.group('what')), (
          f'{page.name}: {match.group(0)} names no `command` and "at COMMIT"')


def _presets_table() -> dict[str, tuple[int, float]]:
  text = (REPO / 'docs' / 'prototyping.md').read_text()
  table = text[text.index('| preset | what | params | G mult-adds |'):].split('\n\n')[0]
  rows = {}
  for line in table.splitlines()[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows[cells[0].strip('`')] = (int(cells[2].replace(',', '')), float(cells[3]))
  return rows


def test_the_presets_table_is_what_cost_counts():
  from inception_jax import config_lib, cost
  rows = _presets_table()
  assert {'inception_v3', 'inception_v2', 'inception_v3_rf79'} <= set(rows)
  for name, (params, gmacs) in rows.items():
    counted = cost.of_config(config_lib.load(f'inception_v3:model={name}'))
    assert (counted.params, round(counted.macs / 1e9, 3)) == (params, gmacs), name


def test_the_readme_model_example_runs():
  text = (REPO / 'README.md').read_text()
  section = text[text.index('## The model in ten lines'):]
  code = FENCE.search(section).group('body')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, 'README.md', 'exec'), {})
  assert out.getvalue().strip() == '(2, 1000)'


# --- A broken page fails --------------------------------------------------------

BROKEN = '''
```bash
python launch.py train --config configs/no_such_config.py --workdir runs/x
python launch.py compare runs/t3 --format pdf
python -m inception_jax sweep table3_ablation:scale=demo --workdir runs/t3 [--paralel 2]
make no-such-target
bash scripts/no_such_script.sh --all
pip install '.[no_such_extra]'
python benchmarks/train_step.py --no-such-flag
frobnicate --all
```
'''


def test_a_broken_command_is_named(workspace):
  commands = shell_commands(BROKEN, 'page.md')
  problems = [check(c, workspace) for c in commands]
  assert all(problems), [str(c) for c, p in zip(commands, problems) if p is None]
  assert 'no_such_config.py' in problems[0] and 'page.md:3:' in problems[0]
  assert "invalid choice: 'pdf'" in problems[1]
  assert '--paralel' in problems[2]
  assert 'no-such-target' in problems[3]
  assert 'no file scripts/no_such_script.sh' in problems[4]
  assert 'no extra no_such_extra' in problems[5]
  assert '--no-such-flag' in problems[6]
  assert 'not a command of this project' in problems[7]


def test_a_stale_printed_block_is_named(workspace):
  page = (REPO / 'README.md').read_text()
  (command, dst, src, block), = [b for b in printed_blocks(page, 'README.md')
                                 if 'compare' in b[0].text]
  stale = block.replace('inception_v3   ', 'inception_v4   ', 1)
  problem = check_printed(command, dst, src, stale, workspace)
  assert problem and 'inception_v4' in problem and 'inception_v3' in problem
  unmarked = page.replace(f'<!-- printed by: {command.text}', '<!-- ', 1)
  assert unmarked_printed(unmarked, 'README.md')


def test_optional_arguments_and_alternatives_are_each_checked():
  text = '```bash\npython launch.py compare runs/t3 [--format text|json]  # two\n```\n'
  assert [c.text for c in shell_commands(text, 'p.md')] == [
      'python launch.py compare runs/t3 --format text',
      'python launch.py compare runs/t3 --format json']
