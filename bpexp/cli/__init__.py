"""The ``bpexp`` command group.

One place, :class:`BpexpGroup`, turns exceptions into a message and an exit code:
a :class:`~bpexp.errors.BpexpError` gives its own code (2 for bad input), anything
else is an internal error (1). Commands live in their own modules and stay thin:
each parses flags and calls the library.
"""

from __future__ import annotations

import os
import sys

import click

from bpexp import __version__
from bpexp.errors import BpexpError


class CommandError(click.ClickException):
    """A BpexpError on its way out: one line on stderr and the error's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:  # noqa: D401 - click's signature
        click.echo(f"bpexp: error: {self.format_message()}", err=True)


class BpexpGroup(click.Group):
    """A click group that maps bpexp's exceptions to exit codes (2 bad input, 1 internal)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BpexpError as exc:
            raise CommandError(str(exc), exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an internal error: say so, keep the traceback for BPEXP_DEBUG=1
            if os.environ.get("BPEXP_DEBUG"):
                raise
            raise CommandError(
                f"internal error: {type(exc).__name__}: {exc} (set BPEXP_DEBUG=1 for the traceback)", 1
            ) from None


@click.group(cls=BpexpGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bpexp")
def cli() -> None:
    """bpexp: train by backpropagation, sweep the learning rate, and learn why a run worked or failed.

    \b
    Start with:
      bpexp train --dataset digits            one run, with a summary
      bpexp train --spec experiments/digits_mlp.yaml --json
    Every command takes --help. Exit codes: 0 done (a diverged run is a result),
    2 bad input or an unreachable service, 1 an internal error.
    """


def _register() -> None:
    from bpexp.cli import train_cmd

    cli.add_command(train_cmd.train_command)

    from bpexp.cli import lrfind_cmd

    cli.add_command(lrfind_cmd.lrfind_command)

    from bpexp.cli import clr_cmd

    cli.add_command(clr_cmd.clr_command)

    from bpexp.cli import sweep_cmd

    cli.add_command(sweep_cmd.sweep_command)

    from bpexp.cli import ui_cmd

    cli.add_command(ui_cmd.ui_command)

    from bpexp.cli import report_cmd

    cli.add_command(report_cmd.report_command)

    from bpexp.cli import batch_cmd

    cli.add_command(batch_cmd.batch_group)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="bpexp")
