"""`ipjms pki …` and `ipjms audit …` sub-commands."""

from __future__ import annotations

import typer

pki_app = typer.Typer(no_args_is_help=True)
audit_app = typer.Typer(no_args_is_help=True)
