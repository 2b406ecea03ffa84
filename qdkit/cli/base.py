"""The `qdkit` group: one-line errors (exit 2), one-line warnings, Ctrl-C as exit 130, --debug."""

from __future__ import annotations

import click

from qdkit.constants import QDKIT_VERSION
from qdkit.errors import QdkitError


def csv_list(value: str | None) -> list[str] | None:
    """`a, b,,c` -> ["a", "b", "c"]; None for no value."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


class _Group(click.Group):
    """Turns a QdkitError into one line on stderr and exit code 2, a Python warning into one
    `qdkit: warning:` line, Ctrl-C into `qdkit: interrupted` and exit code 130: a user never sees a
    traceback. With --debug (or QDKIT_DEBUG=1) the full traceback of an error comes first, and
    warnings keep Python's format (file and line): what a bug report needs."""

    def invoke(self, ctx: click.Context):
        import warnings

        debug = bool(ctx.params.get("debug"))
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except QdkitError as e:
            if debug:
                import traceback

                traceback.print_exception(e)
            click.echo(f"qdkit: error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("qdkit: interrupted", err=True)
            ctx.exit(130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()
    click.echo(f"qdkit: warning: {text[0] if text else category.__name__}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(QDKIT_VERSION, prog_name="qdkit")
@click.option(
    "--debug",
    is_flag=True,
    envvar="QDKIT_DEBUG",
    help="On an error, print the full traceback before the one-line message (also QDKIT_DEBUG=1).",
)
def main(debug: bool) -> None:
    """Quick, Draw! doodles: bitmaps or strokes -> HDF5 store -> CNN -> ONNX -> predictions and a live service."""
