"""The runbooks, served at ``/runbooks/<AlertName>``: so that every alert's ``runbook_url`` opens
a page wherever the exporter runs, with no repository or wiki to reach.

The pages are ``docs/runbooks/*.md``, shipped inside the package (``exporter/data/runbooks``),
rendered from CommonMark to one self-contained HTML page each (inline CSS, no script, no raw
HTML from the Markdown). Links between runbooks (``DeepSeekBalanceLow.md``) become links to the
served pages; ``/runbooks/`` is the index.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources
from importlib.abc import Traversable

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,80}$")
INDEX = "README"


def _directory() -> Traversable:
    return resources.files("exporter") / "data" / "runbooks"


def names() -> list[str]:
    """Alert names that have a runbook."""
    found = (entry.name for entry in _directory().iterdir() if entry.name.endswith(".md"))
    return sorted(name.removesuffix(".md") for name in found if name != f"{INDEX}.md")


def render(name: str) -> str | None:
    """The page of runbook ``name`` (``INDEX`` for the index), or None when there is none."""
    if not NAME_RE.match(name):
        return None
    source = _directory() / f"{name}.md"
    if not source.is_file():
        return None
    return _render(name, source.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=32)
def _render(name: str, markdown: str) -> str:
    from markdown_it import MarkdownIt  # only needed when someone opens a runbook

    parser = MarkdownIt("js-default")  # CommonMark + tables; raw HTML is escaped, not passed on
    parser.core.ruler.push("runbook_links", _rewrite_links)
    body = parser.render(markdown)
    title = "Runbooks" if name == INDEX else name
    return _PAGE.format(title=html.escape(title), body=body, css=_CSS)


def _rewrite_links(state: object) -> None:
    """``DeepSeekX.md`` -> ``DeepSeekX`` (the served page, relative to /runbooks/)."""
    for token in state.tokens:  # type: ignore[attr-defined]
        for child in token.children or ():
            href = child.attrGet("href") if child.type == "link_open" else None
            if href and not re.match(r"^[a-z]+:", href) and href.endswith(".md"):
                target = href.rsplit("/", 1)[-1].removesuffix(".md")
                child.attrSet("href", "./" if target == INDEX else target)


_CSS = """
body{margin:0 auto;max-width:860px;padding:20px;font:16px/1.55 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif;color:#1f2328}
nav{font-size:14px;margin-bottom:12px}nav a{color:#0969da;margin-right:14px}
h1{font-size:28px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
h2{font-size:21px;margin-top:28px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;
background:#eff1f3;padding:1px 4px;border-radius:4px}
pre{background:#0d1117;color:#e6edf3;padding:12px;border-radius:6px;overflow-x:auto}
pre code{background:none;padding:0;color:inherit}
table{border-collapse:collapse}th,td{border:1px solid #d0d7de;padding:5px 10px;text-align:left}
a{color:#0969da}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}: deepseek-exporter runbook</title><style>{css}</style></head>
<body><nav><a href="../">Status</a><a href="./">All runbooks</a>
<a href="../metrics">Metrics</a></nav>
{body}
</body></html>
"""
