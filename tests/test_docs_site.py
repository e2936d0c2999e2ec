"""The docs site (mkdocs.yml, docs/, docs/hooks/): `mkdocs build --strict`
builds every section, the generated reference matches the code, and a link to
a missing page or repository file fails the build."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inception_jax.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, NO_MKDOCS_2_WARNING='1')
  return subprocess.run(
      [sys.executable, '-m', 'mkdocs', 'build', '--strict', '--config-file',
       str(root / 'mkdocs.yml'), '--site-dir', str(site)],
      capture_output=True, text=True, env=env, timeout=300)


def _copy_with_page(tmp_path: Path, page: str, addition: str) -> Path:
  """The repository with its own docs/ and mkdocs.yml, `addition` on `page`."""
  root = tmp_path / 'repo'
  root.mkdir()
  for entry in REPO.iterdir():
    if entry.name in ('docs', 'mkdocs.yml'):
      continue
    if entry.name not in ('.git', '.venv', 'site'):
      (root / entry.name).symlink_to(entry)
  shutil.copytree(REPO / 'docs', root / 'docs',
                  ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copy(REPO / 'mkdocs.yml', root / 'mkdocs.yml')
  with open(root / 'docs' / page, 'a') as f:
    f.write('\n\n' + addition + '\n')
  return root


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
  site = tmp_path_factory.mktemp('site')
  result = _build(REPO, site)
  assert result.returncode == 0, result.stderr
  return site


def _page(site: Path, name: str) -> str:
  return (site / name / 'index.html').read_text()


def test_every_section_is_built(site):
  assert (site / 'index.html').exists()
  for name in ('data', 'training', 'faults', 'ARCHITECTURE', 'paper_notes',
               'reference/cli', 'reference/exit_statuses', 'reference/models'):
    assert (site / name / 'index.html').exists(), name


def test_cli_reference_is_each_commands_help(site):
  page = _page(site, 'reference/cli')
  from inception_jax import cli
  for command in ('train', 'sweep', 'search', 'compare', 'eval', 'prepare'):
    assert 'usage: python -m inception_jax %s' % command in page
  assert cli.__doc__.split('\n', 1)[0].split('`')[0].strip() in page


def test_exit_statuses_table_is_the_enum(site):
  page = _page(site, 'reference/exit_statuses')
  for member in ExitCode:
    assert '<code>%s</code>' % member.name in page
  assert 'stopped being finite' in page      # NON_FINITE's comment in errors.py


def test_api_reference_renders_docstrings(site):
  page = _page(site, 'reference/models')
  assert 'inception_jax.models.Inception' in page
  assert 'The Inception network assembled from a spec' in page


def test_link_to_an_existing_repository_file_builds(tmp_path):
  root = _copy_with_page(tmp_path, 'data.md', 'See [the config](../configs/inception_v3.py).')
  result = _build(root, tmp_path / 'site')
  assert result.returncode == 0, result.stderr
  assert '<code>configs/inception_v3.py</code>' in _page(tmp_path / 'site', 'data')


@pytest.mark.parametrize('target', ['no_such_page.md', '../configs/no_such_config.py'])
def test_a_broken_link_fails_the_build(tmp_path, target):
  root = _copy_with_page(tmp_path, 'data.md', 'See [nothing](%s).' % target)
  result = _build(root, tmp_path / 'site')
  assert result.returncode != 0
  assert target.rsplit('/', 1)[-1] in result.stderr
