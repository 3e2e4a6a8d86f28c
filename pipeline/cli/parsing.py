"""Typed command-line options: each bad value is refused while parsing with one line naming the
option, what it must be and what was given (``gradjob: error: --epsilon must be a positive
finite number; got 0.0``), exit code 2. Choices come from ``types``. ``typed`` makes the Typer
option of a parser, so that ``--help`` shows its choices or range as click's Choice, IntRange and
FloatRange would (``<central|five-point|complex-step>``, ``[x>=1]``), with these messages kept."""

from __future__ import annotations

import math
import sys

import typer
import typer.core
from typer.exceptions import TyperException

from gradjob.errors import InputError


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line on stderr and exit code 2, instead of a usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except InputError as exc:  # from the parsers below
            typer.echo(f"gradjob: error: {exc}", err=True)
            code = exc.exit_code
        except TyperException as exc:  # click's usage errors (Typer vendors click)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"gradjob: error: {message.rstrip('.')}; see gradjob -h", err=True)
            code = getattr(exc, "exit_code", 2)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


class _Parser:
    """A Typer ``parser=``: the raw text in, the value out, or ``InputError`` naming the option.
    ``metavar`` and ``bounds`` (Typer's ``min``/``max``) are what ``--help`` shows of it."""

    __name__ = "value"
    metavar: str | None = None
    bounds: dict = {}
    range_text = ""  # a range Typer's min/max cannot say (an open bound)

    def __init__(self, option: str):
        self.option = option


class AtLeast(_Parser):
    metavar = "<int range>"

    def __init__(self, option: str, minimum: int = 1):
        super().__init__(option)
        self.minimum = minimum
        self.bounds = {"min": minimum}

    def __call__(self, value):
        try:
            number = int(str(value))
        except ValueError:
            raise InputError(f"{self.option} must be a whole number; got {value!r}") from None
        if number < self.minimum:
            raise InputError(f"{self.option} must be at least {self.minimum}; got {number}")
        return number


class PositiveNumber(_Parser):
    metavar = "<float range>"
    range_text = "[x>0]"

    def __call__(self, value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.option} must be a positive finite number; got {value!r}") from None
        if not (math.isfinite(number) and number > 0):
            raise InputError(f"{self.option} must be a positive finite number; got {number}")
        return number


class OneOf(_Parser):
    def __init__(self, option: str, choices: tuple[str, ...]):
        super().__init__(option)
        self.choices = choices
        self.metavar = f"<{'|'.join(choices)}>"

    def __call__(self, value):
        if value not in self.choices:
            raise InputError(f"{self.option} must be one of {', '.join(self.choices)}; got {value!r}")
        return value


class Sizes(_Parser):
    """Comma-separated layer sizes such as 784,512,256,1."""

    metavar = "<int,int,...>"

    def __call__(self, value):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in str(value).split(","))
        except ValueError:
            raise InputError(f"{self.option} must be comma-separated sizes such as 784,512,256,1; got {value!r}") from None


def typed(default, *declarations: str, parser: _Parser, help: str, **options):
    """``typer.Option`` parsed by ``parser``, its choices or range shown in ``--help``."""
    text = f"{help}  {parser.range_text}" if parser.range_text else help
    return typer.Option(default, *declarations, parser=parser, metavar=parser.metavar, help=text,
                        **parser.bounds, **options)
