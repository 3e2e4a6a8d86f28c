"""Typed command-line options, made from the declarations in ``gradjob.options``: each bad value is
refused while parsing with the option's one line (``gradjob: error: --epsilon must be a positive
finite number; got 0.0``), exit code 2. ``typed`` makes the Typer option of a declaration, so that
``--help`` shows its choices or range as click's Choice, IntRange and FloatRange would
(``<central|five-point|complex-step>``, ``[x>=1]``), with these messages kept; ``with_options``
gives a command the parameters of a tuple of declarations."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Optional

import typer
import typer.core
from typer.exceptions import TyperException

from gradjob.errors import InputError
from gradjob.options import Count, Flag, Option, Positive, Sizes, Text

JSON_COMMANDS = ("submit", "report", "bench")  # commands with --json: a refusal is a JSON object on stdout too


def error_json(message: str, exit_code: int) -> str:
    """What ``--json`` prints for a check that never ran or could not finish: the error, not an empty
    stdout."""
    return json.dumps({"passed": False, "error": message, "exit_code": exit_code})


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line on stderr and exit code 2, instead of a usage block (and, with
    ``--json``, as a JSON object on stdout)."""

    def main(self, args=None, *rest, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(args, *rest, standalone_mode=False, **kwargs)
        except InputError as exc:  # from the readers below
            code = _refuse(str(exc), exc.exit_code, args)
        except TyperException as exc:  # click's usage errors (Typer vendors click)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            code = _refuse(f"{message.rstrip('.')}; see gradjob -h", getattr(exc, "exit_code", 2), args)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _refuse(message: str, code: int, args) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if code == 2 and argv and argv[0] in JSON_COMMANDS and "--json" in argv:
        typer.echo(error_json(message, code))
    typer.echo(f"gradjob: error: {message}", err=True)
    return code


class _Reader:
    """A Typer ``parser=``: the raw text in, the value out, or ``InputError`` naming the option."""

    __name__ = "value"

    def __init__(self, option: Option):
        self.option = option

    def __call__(self, value):
        return self.option.read(value)


def typed(option: Option, *declarations: str, **typer_options):
    """``typer.Option`` of a declaration, its choices or range shown in ``--help``."""
    default = option.default
    if isinstance(option.kind, Flag):
        return typer.Option(default, *declarations, help=option.help, envvar=option.envvar, **typer_options)
    if isinstance(option.kind, Sizes) and isinstance(default, tuple):
        default = ",".join(map(str, default))
    text = f"{option.help}  {option.kind.range_text}" if option.kind.range_text else option.help
    if isinstance(option.kind, Text):
        return typer.Option(default, *declarations, help=text, envvar=option.envvar, **typer_options)
    return typer.Option(default, *declarations, parser=_Reader(option), metavar=option.kind.metavar, help=text,
                        envvar=option.envvar, **option.kind.bounds, **typer_options)


def _annotation(option: Option):
    kind = {Flag: bool, Count: int, Positive: float}.get(type(option.kind), str)
    return Optional[kind] if option.default is None else kind


def with_options(options: tuple[Option, ...], after: str):
    """A Typer command's parameters: the function's own, with one per declaration after ``after``;
    the function takes them as ``**options``."""
    def decorate(function):
        own = [p for p in inspect.signature(function, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        made = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=typed(o), annotation=_annotation(o))
                for o in options]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at:]]
        function.__signature__ = inspect.Signature(own[:at] + made + keyword)
        return function
    return decorate
