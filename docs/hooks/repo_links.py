"""MkDocs hook: links from a docs page to a repository file outside docs/.

The pages link to the code (`../configs/inception_v3.py`, `../README.md`),
which MkDocs does not publish. Such a link to a file that exists in the
checkout is rewritten: to the file on `repo_url` when mkdocs.yml sets one,
otherwise to the path as code text. One to a file that does not exist is left
alone, so MkDocs' link check reports it and `mkdocs build --strict` fails, as
for a missing page.
"""

import posixpath
import re
from pathlib import Path

# [text](target) with no space or parenthesis in the target; images too.
_LINK = re.compile(r'(!?)\[([^\]]*)\]\(([^)\s]+)\)')


def _outside_target(page_uri: str, target: str) -> str | None:
  """The repository path a relative link leaves docs/ for, else None."""
  if re.match(r'^[a-z][a-z0-9+.-]*:|^#|^/', target):    # URL, anchor, absolute
    return None
  path = target.split('#', 1)[0]
  resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
  if not resolved.startswith('../'):
    return None
  return resolved[len('../'):]


def on_page_markdown(markdown, page, config, files):
  repo_root = Path(config.docs_dir).parent
  blob = config.repo_url.rstrip('/') + '/blob/main/' if config.repo_url else None

  def rewrite(match):
    bang, text, target = match.groups()
    path = _outside_target(page.file.src_uri, target)
    if path is None or not (repo_root / path).exists():
      return match.group(0)
    anchor = target[len(target.split('#', 1)[0]):]
    if blob:
      return '%s[%s](%s%s%s)' % (bang, text, blob, path, anchor)
    return text if text.strip('`') == path else '%s (`%s`)' % (text, path)

  return _LINK.sub(rewrite, markdown)
