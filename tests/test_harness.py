"""The test harness itself: `make test` runs two xdist workers with
`--dist loadgroup`, so that tests sharing a module's expensive runs
(`xdist_group`) make those runs once. A pytest or xdist upgrade that drops the
grouping fails no other test; it only makes the suite slower. Likewise the
garbage collector's threshold, which the workers share with the command line."""

import gc
import subprocess
import sys
import textwrap

import pytest

from inception_jax import cli


def test_grouped_tests_run_on_one_worker_and_build_their_fixture_once(tmp_path):
  (tmp_path / 'test_grouped.py').write_text(textwrap.dedent('''
      import os
      import pytest

      @pytest.fixture(scope='module')
      def expensive():
        with open('builds.txt', 'a') as f:
          f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')

      @pytest.mark.parametrize('i', range(6))
      @pytest.mark.xdist_group('shared')
      def test_grouped(expensive, i):
        pass

      @pytest.mark.parametrize('i', range(6))
      def test_free(i):
        pass
      '''))
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-n', '2', '--dist',
                         'loadgroup', '-p', 'no:cacheprovider', 'test_grouped.py'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert len((tmp_path / 'builds.txt').read_text().split()) == 1, \
      'the grouped tests ran on both workers: is --dist loadgroup grouping?'


def test_the_tests_and_every_command_collect_garbage_less_often():
  """`cli.GC_THRESHOLD`: set for this worker by conftest.py, and by `cli.main`
  before any command (here `--version`, which exits while parsing)."""
  assert gc.get_threshold() == cli.GC_THRESHOLD
  gc.set_threshold(700, 10, 10)                 # Python's default
  try:
    with pytest.raises(SystemExit):
      cli.main(['--version'])
    assert gc.get_threshold() == cli.GC_THRESHOLD
  finally:
    cli.collect_less_often()
