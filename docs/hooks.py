"""MkDocs hooks: pages generated from the code at build time, so they cannot drift.

* ``cli-reference.md``: the marker ``<!-- rechub:cli-reference -->`` is replaced
  by :func:`rechub_serving.cli.reference_markdown` (rendered from the typer app).
* ``<!-- rechub:capabilities -->`` on any page is replaced by a table of the
  installed backends and their capabilities (:func:`rechub_serving.list_backends`).
* ``<!-- rechub:params NAME -->`` is replaced by the parameter table of backend NAME.
* A relative link to a repository file outside ``docs/`` (``[the example](../plugins/x/README.md)``,
  natural when the page is read on GitHub) is rendered as the repository path in code, since
  the site cannot serve it. Links to files that exist nowhere are left alone, so
  ``mkdocs build --strict`` still reports them.

Registered in ``mkdocs.yml`` under ``hooks:``. Nothing here touches the network.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.rechub")

CLI_MARKER = "<!-- rechub:cli-reference -->"
CAPS_MARKER = "<!-- rechub:capabilities -->"
PARAMS_MARKER = re.compile(r"<!-- rechub:params (\w+) -->")

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
FENCE = re.compile(r"^\s*(```|~~~)")

CAPABILITY_COLUMNS = ("exact", "add", "remove", "native_filter", "persist", "mmap", "gpu")


def cli_reference() -> str:
    """The CLI reference as markdown, or a note while the CLI has no renderer yet."""
    try:
        from rechub_serving.cli import reference_markdown

        return reference_markdown()
    except ImportError as exc:  # the CLI (or typer) is not installed: say so on the page
        log.info("CLI reference not generated: %s", exc)
        return (
            "# CLI reference\n\n!!! note\n    The command reference is generated from the typer app at build time, "
            f"but the CLI could not be imported here (`{exc}`). Run `rechub-index --help` instead.\n"
        )


def _mark(value: bool) -> str:
    return "yes" if value else "—"


def capabilities_table() -> str:
    """One row per installed backend: distribution and capabilities."""
    from rechub_serving import list_backends, list_broken_plugins

    head = "| backend | distribution | " + " | ".join(c.replace("_", " ") for c in CAPABILITY_COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(CAPABILITY_COLUMNS)
    rows = [head, rule]
    for info in list_backends():
        caps = info.capabilities.as_dict()
        cells = " | ".join(_mark(caps[c]) for c in CAPABILITY_COLUMNS)
        rows.append(f"| `{info.name}` | `{info.distribution}` | {cells} |")
    for broken in list_broken_plugins():
        error = broken.error.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{broken.plugin}` (broken) | `{broken.distribution}` | {error} |")
    return "\n".join(rows) + "\n"


def params_table(name: str) -> str:
    """The parameter schema of one backend (names, aliases, defaults, kind, meaning)."""
    from rechub_serving import UnknownBackendError, get_backend

    try:
        info = get_backend(name)
    except UnknownBackendError:
        return f"!!! note\n    The `{name}` backend is not installed where these docs were built.\n"
    rows = ["| parameter | aliases | type | default | kind | meaning |", "|---|---|---|---|---|---|"]
    for param in info.schema():
        if param.secret:
            kind = "secret"
        elif param.search:
            kind = "search (per query)"
        elif param.runtime:
            kind = "runtime (not saved)"
        else:
            kind = "build"
        aliases = ", ".join(f"`{a}`" for a in param.aliases)
        default = "auto" if param.default is None else f"`{param.default!r}`"
        doc = param.doc.replace("|", "\\|")
        if param.choices:
            doc += " (one of " + ", ".join(f"`{c}`" for c in param.choices) + ")"
        rows.append(f"| `{param.name}` | {aliases} | {param.type.__name__} | {default} | {kind} | {doc} |")
    return "\n".join(rows) + "\n"


def repository_links(markdown: str, page_path: str, docs_dir: Path) -> str:
    """Render links that leave ``docs/`` for an existing repository file as that file's path."""
    root = docs_dir.parent

    def replace(match: re.Match) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        rel = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), target))
        if not rel.startswith("../"):
            return match[0]  # inside docs/: MkDocs resolves and validates it
        repo_path = posixpath.normpath(posixpath.join(docs_dir.name, rel))
        if repo_path.startswith("../") or not (root / repo_path).exists():
            return match[0]  # outside the repository, or missing: leave it for the strict check
        return f"{match['text']} (`{repo_path}`)"

    out, in_fence = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else LINK.sub(replace, line))
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers with generated markdown; render links to repository files."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CAPS_MARKER in markdown:
        markdown = markdown.replace(CAPS_MARKER, capabilities_table())
    markdown = PARAMS_MARKER.sub(lambda m: params_table(m.group(1)), markdown)
    return repository_links(markdown, page.file.src_uri, Path(config["docs_dir"]))
