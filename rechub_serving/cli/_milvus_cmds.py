"""``rechub-index milvus list|drop|convert``: what the Milvus plugin left where (registered by :func:`register`).

The work is done by the plugin (``rechub_serving_milvus.inventory``), imported
when a command runs; this module parses, calls and renders. Without
``--uri``/``--path`` the commands look at this machine's embedded databases:
the private ones under the plugin's work root and rechub-serving-milvus 0.1's
shared database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import CliError, UsageProblem, format_bytes, state
from ._options import output_options
from ._render import print_table

__all__ = ["register", "release_replaced"]

_UriOpt = Annotated[str | None, typer.Option("--uri", help="A Milvus server, e.g. http://host:19530.")]
_PathOpt = Annotated[
    Path | None,
    typer.Option("--path", help="A milvus-lite database (default: rechub-serving-milvus 0.1's shared one)."),
]
_TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Server credentials user:password (default: $RECHUB_MILVUS_TOKEN).")
]
_DbOpt = Annotated[str | None, typer.Option("--db-name", help="Database on the server.")]
_SearchOpt = Annotated[
    list[Path] | None,
    typer.Option("--search", "-s", help="Directory whose saved indexes count as references (repeatable; default: .)."),
]


def _inventory() -> Any:
    try:
        from rechub_serving_milvus import inventory
    except ImportError as exc:
        raise CliError(
            f"the milvus commands need the milvus plugin (pip install rechub-serving-milvus): {exc}"
        ) from None
    return inventory


def release_replaced(
    manifest: Mapping[str, Any] | None, params: Mapping[str, Any] | None = None, output: Path | None = None
) -> str | None:
    """After ``--overwrite`` replaced a saved index: drop the server collection the old one pointed at.

    ``manifest`` is the replaced index's manifest, read before the save;
    ``output`` the saved index now there (its collection is never dropped).
    Only an SDK collection on a server is dropped (an embedded save held its
    own database, gone with the replaced directory); returns its name.
    """
    if not manifest or manifest.get("backend") != "milvus" or not isinstance(manifest.get("engine"), Mapping):
        return None
    old = manifest["engine"]
    if output is not None:
        from rechub_serving import read_manifest

        new = read_manifest(output).get("engine") or {}
        if new.get("collection") == old.get("collection") and new.get("location") == old.get("location"):
            return None  # the new index uses the same collection
    name = _inventory().release_saved(old, token=(params or {}).get("token"))
    if name:
        state.note(f"dropped collection {name!r}, which the replaced index pointed at")
    return name


def register(app: typer.Typer) -> None:
    """Add the ``milvus`` command group to ``app``."""
    # the app's own classes: flags shown without a type, -h as --help
    milvus = type(app)(
        cls=app.info.cls,
        context_settings={"help_option_names": ["-h", "--help"]},
        help="The Milvus plugin's collections and embedded databases: list, drop, convert 0.1 saved indexes.",
        no_args_is_help=True,
    )
    app.add_typer(milvus, name="milvus")

    @milvus.command("list")
    @output_options
    def list_cmd(
        uri: _UriOpt = None,
        path: _PathOpt = None,
        token: _TokenOpt = None,
        db_name: _DbOpt = None,
        search: _SearchOpt = None,
    ) -> None:
        """List the SDK's collections (with --uri or --path) or this machine's embedded databases, with their state.

        States: referenced (a saved index under --search points at it), in use (temporary, its process is
        alive), dead owner (temporary, its process is gone), other host, unreferenced (kept, no saved index
        found). Collections the SDK did not create are shown with --debug only.
        """
        inv = _inventory()
        dirs = search or [Path(".")]
        payload: dict[str, Any] = {}
        if uri is None and path is None:
            databases = inv.list_databases()
            payload["databases"] = [d.as_dict() for d in databases]
            legacy = inv.legacy_lite_path()
            if legacy.exists():
                payload["legacy_database"] = str(legacy)
                payload["collections"] = [s.as_dict() for s in inv.list_collections(path=legacy, search=dirs)]
        else:
            payload["collections"] = [
                s.as_dict() for s in inv.list_collections(uri=uri, path=path, token=token, db_name=db_name, search=dirs)
            ]
        if state.json:
            state.emit_json(payload)
            return
        if "databases" in payload:
            rows = [
                [d["path"], "alive" if d["alive"] else "owner gone", d["pid"], d["created"], d["purpose"],
                 format_bytes(d["size_bytes"])]
                for d in payload["databases"]
            ]  # fmt: skip
            print_table("Private milvus-lite databases", ["path", "state", "pid", "created", "purpose", "size"], rows)
        if "collections" in payload:
            where = uri or path or payload.get("legacy_database")
            shown = [s for s in payload["collections"] if s["sdk"] or state.debug]
            rows = [[s["name"], s["state"], s["rows"], s["owner"], s["created"], ", ".join(s["referenced_by"]) or None]
                    for s in shown]  # fmt: skip
            print_table(
                f"Collections on {where}",
                ["name", "state", "rows", "owner", "created", "saved index"],
                rows,
                right=(2,),
            )
            hidden = len(payload["collections"]) - len(shown)
            if hidden:
                state.note(f"{hidden} collections not created by rechub-serving are not shown (--debug shows them)")

    @milvus.command("drop")
    @output_options
    def drop_cmd(
        names: Annotated[list[str] | None, typer.Argument(help="Collections to drop.", show_default=False)] = None,
        dead: Annotated[
            bool, typer.Option("--dead", help="Temporary collections (and private databases) of dead processes.")
        ] = False,
        unreferenced: Annotated[
            bool, typer.Option("--unreferenced", help="Kept collections no saved index under --search points at.")
        ] = False,
        force: Annotated[
            bool, typer.Option("--force", help="Drop named collections even when referenced or in use.")
        ] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be dropped; drop nothing.")] = False,
        uri: _UriOpt = None,
        path: _PathOpt = None,
        token: _TokenOpt = None,
        db_name: _DbOpt = None,
        search: _SearchOpt = None,
    ) -> None:
        """Drop the SDK's collections by name or by state; never one the SDK did not create.

        Without --uri/--path, --dead removes the private databases of dead processes, and names or
        --unreferenced apply to rechub-serving-milvus 0.1's shared database.
        """
        if not (names or dead or unreferenced):
            raise UsageProblem("name the collections to drop, or pass --dead and/or --unreferenced")
        inv = _inventory()
        dirs = search or [Path(".")]
        payload: dict[str, Any] = {"dropped": [], "refused": [], "databases_removed": []}
        embedded = uri is None and path is None
        if embedded and dead and not dry_run:
            payload["databases_removed"] = [str(p) for p in inv.remove_dead_databases()]
        states = [s for s, on in (("dead owner", dead), ("unreferenced", unreferenced)) if on]
        target_path = path
        if embedded:
            legacy = inv.legacy_lite_path()
            target_path = legacy if legacy.exists() else None
        if names or (states and (not embedded or target_path is not None)):
            if embedded and target_path is None:
                raise CliError("there is no shared milvus-lite database here; give --uri or --path")
            dropped, refused = inv.drop_collections(
                names or [],
                states=states,
                uri=uri,
                path=target_path,
                token=token,
                db_name=db_name,
                search=dirs,
                force=force,
                dry_run=dry_run,
            )
            payload["dropped"] = [s.as_dict() for s in dropped]
            payload["refused"] = [{"name": n, "why": why} for n, why in refused]
        if state.json:
            state.emit_json(payload)
        else:
            verb = "would drop" if dry_run else "dropped"
            for d in payload["databases_removed"]:
                state.note(f"removed private database {d}")
            for s in payload["dropped"]:
                state.out().print(f"{verb} {s['name']} ({s['state']})")
            if not payload["dropped"] and not payload["databases_removed"]:
                state.note("nothing to drop")
        named_refusals = [r for r in payload["refused"] if r["name"] in (names or [])]
        if named_refusals:
            first = named_refusals[0]
            raise CliError(
                f"{first['name']}: {first['why']}"
                + (f" (and {len(named_refusals) - 1} more)" if len(named_refusals) > 1 else "")
            )

    @milvus.command("convert")
    @output_options
    def convert_cmd(
        index: Annotated[Path, typer.Argument(help="A saved milvus index (0.1: a pointer into a shared database).")],
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Write the converted index here (default: in place).")
        ] = None,
    ) -> None:
        """Make a saved embedded Milvus index self-contained: its database inside the saved directory."""
        from rechub_serving import open_index, read_manifest

        manifest = read_manifest(index)
        if manifest.get("backend") != "milvus":
            raise CliError(f"{index} is a {manifest.get('backend')} index, not a milvus one: nothing to convert")
        engine = manifest.get("engine") or {}
        location = engine.get("location") or {}
        if engine.get("layout") == "embedded" or location.get("kind") != "lite":
            what = "holds its own database" if engine.get("layout") == "embedded" else "points at a server collection"
            if output is None:
                state.note(f"{index} {what}: nothing to convert")
                if state.json:
                    state.emit_json({"index": str(index), "converted": False})
                return
        target = output or index
        with open_index(index) as opened:
            opened.save(target)
            count = len(opened)
        result = {"index": str(target), "converted": True, "count": count}
        if state.json:
            state.emit_json(result)
        elif not state.quiet:
            state.out().print(f"{target}: now holds its own milvus-lite database ({count} vectors)")
