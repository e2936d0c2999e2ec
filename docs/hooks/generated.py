"""MkDocs hook: the pages' facts that the code owns, generated at build time.

A page holds a marker on a line of its own and the build replaces it, so the
command-line reference and the exit statuses are never retyped:

  <!-- generated: cli-help -->      `python -m inception_jax --help` and each
                                    command's `--help`, from `cli.main`'s parser
  <!-- generated: exit-statuses --> a table of `errors.ExitCode`: value, name,
                                    and the comments written beside each member
"""

import contextlib
import inspect
import io
import os
import re
import sys
import tokenize
from pathlib import Path

# The package from this checkout, whether or not it is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from inception_jax import cli  # noqa: E402
from inception_jax.errors import ExitCode  # noqa: E402

PROG = 'python -m inception_jax'
_MARKER = re.compile(r'^<!-- generated: ([a-z-]+) -->$', re.MULTILINE)


def _help(argv) -> str:
  """What `PROG argv` prints: argparse prints the help, then exits."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    cli.main(argv, prog=PROG)
  return out.getvalue().rstrip()


def _commands() -> list[str]:
  """The subcommands, read from the usage line's `{train,cost,…}` choice."""
  choices = re.search(r'\{([a-z,_-]+)\}', _help(['--help']))
  return choices.group(1).split(',')


def cli_help() -> str:
  sections = ['```text\n$ %s --help\n%s\n```' % (PROG, _help(['--help']))]
  for command in _commands():
    sections.append('## `%s`\n\n```text\n$ %s %s --help\n%s\n```'
                    % (command, PROG, command, _help([command, '--help'])))
  return '\n\n'.join(sections)


def _member_comments() -> dict[str, str]:
  """Each `ExitCode` member's comments: the lines above it and the one beside."""
  comments, pending = {}, []
  tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(ExitCode)).readline)
  name = None
  for token in tokens:
    if token.type == tokenize.COMMENT:
      text = token.string.lstrip('#').strip()
      if name and token.start[0] == line:    # beside the member: its own
        comments[name] = ' '.join(filter(None, [comments[name], text]))
      else:
        pending.append(text)
    elif token.type == tokenize.NAME and token.string in ExitCode.__members__:
      name, line = token.string, token.start[0]
      comments[name], pending = ' '.join(pending), []
  return comments


def exit_statuses() -> str:
  comments = _member_comments()
  rows = ['| Status | Name | Meaning |', '|---:|---|---|']
  for member in ExitCode:
    meaning = comments.get(member.name) or 'success'
    rows.append('| %d | `%s` | %s |' % (member.value, member.name, meaning.replace('|', r'\|')))
  return '\n'.join(rows)


_GENERATORS = {'cli-help': cli_help, 'exit-statuses': exit_statuses}


def on_config(config):
  os.environ['COLUMNS'] = '100'    # argparse wraps to the terminal: a fixed width
  return config


def on_page_markdown(markdown, page, config, files):
  def generate(match):
    if match.group(1) not in _GENERATORS:
      raise ValueError('%s: unknown generated block %r (known: %s)'
                       % (page.file.src_uri, match.group(1), ', '.join(_GENERATORS)))
    return _GENERATORS[match.group(1)]()
  return _MARKER.sub(generate, markdown)
