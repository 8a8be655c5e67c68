"""The command reference as markdown, generated from the typer app (so the docs are never retyped)."""

from __future__ import annotations

from typing import Any

__all__ = ["reference_markdown"]


def _param_row(param: Any, ctx: Any) -> list[str]:
    if getattr(param, "param_type_name", "") == "argument":
        names = f"`{(getattr(param, 'metavar', None) or param.name).upper()}`"
    else:
        names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    if getattr(param, "is_flag", False):
        kind = "flag"
    elif getattr(param, "param_type_name", "") != "argument" and getattr(param, "metavar", None):
        kind = param.metavar
    else:
        try:
            kind = str(param.bare_type())
        except Exception:  # a parameter model without bare_type (another typer version)
            kind = getattr(getattr(param, "type", None), "name", "") or "value"
    if getattr(param, "multiple", False):
        kind += " (repeatable)"
    required = "yes" if param.required else ""
    default = ""
    if not param.required and not getattr(param, "is_flag", False):
        value = param.get_default(ctx, call=False)
        if value not in (None, (), []):
            default = f"`{value}`"
    text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    return [names, kind, required, default, text]


def _command_markdown(command: Any, parent: Any, path: str) -> str:
    import typer

    ctx = typer.Context(command, info_name=path.split()[-1], parent=parent)
    lines = [f"## `{path}`", ""]
    help_text = (command.help or "").strip()
    if help_text:
        lines += [help_text, ""]
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines += ["```", f"{path} {usage}".rstrip(), "```", ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| name | type | required | default | description |", "|---|---|---|---|---|"]
        for p in params:
            lines.append("| " + " | ".join(_param_row(p, ctx)) + " |")
        lines += ["", "`-h`, `--help` shows this help.", ""]
    return "\n".join(lines)


def reference_markdown() -> str:
    """Every command's usage, options and help as markdown (global options first)."""
    import typer

    from ._app import app

    group = typer.main.get_command(app)
    root_ctx = typer.Context(group, info_name="rechub-index")
    parts = [
        "# `rechub-index` command reference",
        "",
        "Generated from the command-line application (`rechub_serving.cli.reference_markdown()`).",
        "Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted (Ctrl-C); errors are one line on stderr (`--debug` adds the traceback).",
        "",
        _command_markdown(group, None, "rechub-index").replace("## `rechub-index`", "## Global options", 1),
    ]
    for name in group.list_commands(root_ctx):
        command = group.get_command(root_ctx, name)
        if command is not None and not getattr(command, "hidden", False):
            parts.append(_command_markdown(command, root_ctx, f"rechub-index {name}"))
    return "\n".join(parts).rstrip() + "\n"
