"""Load a sweep's report.html in headless Chromium: check it, or screenshot it.

`check` opens the file (file:// URL), lets its scripts run, and returns the
console messages it logged and how many Plotly plots it drew; `screenshot`
writes a PNG of it. Uses Debian's Chromium (`apt-get install chromium`);
`--no-sandbox` because CI runs as root, where Chromium's sandbox refuses to
start.

  python scripts/report_browser.py check runs/table3_demo/report.html
  python scripts/report_browser.py screenshot runs/table3_demo/report.html out.png

Both exit non-zero with one `error:` line when Chromium is missing; `check`
also when the page logs to the console or draws fewer plots than it holds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

INSTALL = 'apt-get install chromium'
# Virtual time for the page's scripts: Chromium skips idle time, so this
# costs no wall time once plotly.js has drawn (about a second for 4 MB of it).
BUDGET_MS = 20_000
TIMEOUT_S = 120
# Headless Chromium logs every console message (console.log … console.error,
# uncaught exceptions) as one INFO line without its level:
#   [pid:tid:time:INFO:CONSOLE:1] "Uncaught Error: x", source: file:///… (1)
CONSOLE = re.compile(r':CONSOLE[^\]]*\] "(.*?)", source: (\S*) \((\d+)\)', re.DOTALL)
# A plot plotly.js drew; the placeholders it draws into (Plotly's to_html).
DRAWN = re.compile(r'<div class="[^"]*\bplot-container\b')
PLACEHOLDER = re.compile(r'class="[^"]*\bplotly-graph-div\b')


class BrowserError(RuntimeError):
  """Chromium is missing or failed; the message says what to do."""


def chromium() -> str:
  """The Chromium executable ($CHROMIUM, else `chromium` on PATH)."""
  path = os.environ.get('CHROMIUM') or shutil.which('chromium')
  if not path:
    raise BrowserError(f'headless Chromium not found (no `chromium` on PATH); install '
                       f'it: {INSTALL}')
  return path


def _run(html_path: str, *flags: str) -> subprocess.CompletedProcess:
  """Chromium headless on `html_path` with `flags`, in a fresh profile."""
  if not os.path.isfile(html_path):
    raise BrowserError(f'no such file: {html_path}')
  url = 'file://' + os.path.abspath(html_path)
  with tempfile.TemporaryDirectory(prefix='report_browser_') as profile:
    command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu',
               '--no-first-run', '--no-default-browser-check',
               '--disable-background-networking', '--hide-scrollbars',
               f'--user-data-dir={profile}', '--enable-logging=stderr', '--v=0',
               f'--virtual-time-budget={BUDGET_MS}', *flags, url]
    try:
      proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      raise BrowserError(f'Chromium did not finish {html_path} in {TIMEOUT_S} s') from None
  if proc.returncode != 0:
    tail = proc.stderr.strip().splitlines()[-1:] or ['no output']
    raise BrowserError(f'Chromium exited with {proc.returncode} on {html_path}: {tail[0]}')
  return proc


def console_messages(log: str) -> list[str]:
  """'message (source:line)' for each console line of Chromium's log."""
  return [f'{message} ({source}:{line})' for message, source, line in CONSOLE.findall(log)]


def check(html_path: str) -> tuple[list[str], int]:
  """(console messages, plots drawn) of the page. Every console message
  counts as an error: the log does not give their level, and a report logs
  nothing when all is well."""
  proc = _run(html_path, '--dump-dom')
  return console_messages(proc.stderr), len(DRAWN.findall(proc.stdout))


def placeholders(html_path: str) -> int:
  """How many Plotly figures the file holds (each should be drawn)."""
  with open(html_path, encoding='utf-8') as f:
    return len(PLACEHOLDER.findall(f.read()))


def screenshot(html_path: str, png_path: str, width: int = 1400, height: int = 2400) -> str:
  """Write a `width` × `height` PNG of the page (its top); returns `png_path`."""
  png_path = os.path.abspath(png_path)
  _run(html_path, f'--screenshot={png_path}', f'--window-size={width},{height}')
  if not os.path.isfile(png_path):
    raise BrowserError(f'Chromium wrote no screenshot to {png_path}')
  return png_path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  commands.add_parser('check', help='console messages and plots drawn').add_argument('html')
  shot = commands.add_parser('screenshot', help='a PNG of the page')
  shot.add_argument('html')
  shot.add_argument('png')
  shot.add_argument('--width', type=int, default=1400)
  shot.add_argument('--height', type=int, default=2400)
  args = parser.parse_args(argv)
  try:
    if args.command == 'screenshot':
      print(f'wrote {screenshot(args.html, args.png, args.width, args.height)}')
      return 0
    messages, plots = check(args.html)
    expected = placeholders(args.html)
  except BrowserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if messages:
    print(f'error: {args.html}: {len(messages)} console message(s), the first: '
          f'{messages[0]}', file=sys.stderr)
    return 1
  if plots < expected:
    print(f'error: {args.html}: {plots} of its {expected} plots drawn', file=sys.stderr)
    return 1
  print(f'{args.html}: {plots} of {expected} plots drawn, no console messages')
  return 0


if __name__ == '__main__':
  sys.exit(main())
