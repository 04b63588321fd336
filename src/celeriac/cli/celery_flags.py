"""The command line's advice for Celery's words: a Celery option, pool or command that
celeriac lacks (the tables are in :mod:`celeriac.celery_names`), and celeriac's own option
given after the command (Celery 4's order).

A worker's command line is copied from a Procfile or a systemd unit written for Celery
(``celery -A proj worker -l INFO -n w1@%h -E -O fair``): each option celeriac does not
have was "No such option", with nothing on what to write instead.
"""

from __future__ import annotations

import shlex
from typing import Any

import click

from celeriac.celery_names import CLI_OPTIONS


def celery_option_advice(command: str, option: str | None) -> str:
    """What ``command`` (``worker``, ``beat``) does instead of Celery's ``option``; empty
    when the option is not one of Celery's.

    Example:
        >>> celery_option_advice("worker", "-B")
        "-B is Celery's: use --beat"
        >>> celery_option_advice("worker", "--no-such")
        ''
    """
    advice = CLI_OPTIONS.get(command, {}).get(option or "")
    return f"{option} is Celery's: {advice}" if advice else ""


class CeleryChoice(click.Choice):  # type: ignore[type-arg]  # generic from click 8.2 only
    """A choice among celeriac's values; one of Celery's (a ``-P`` pool, an ``inspect``
    command) says what to use instead.

    Example:
        >>> from celeriac.celery_names import POOLS
        >>> CeleryChoice(["process"], POOLS, "pool").convert("process", None, None)
        'process'
    """

    def __init__(self, choices: list[str], celery: dict[str, str], noun: str) -> None:
        super().__init__(choices)
        self.celery, self.noun = celery, noun

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value chosen, or a usage error that says what replaces Celery's."""
        advice = self.celery.get(value) if isinstance(value, str) else None
        if advice:
            self.fail(f"{value!r} is Celery's {self.noun}: {advice}", param, ctx)
        return super().convert(value, param, ctx)


#: celeriac's own options, which go before the command, with their value's metavar.
_GROUP_OPTIONS = {"-A": "MODULE", "--app": "MODULE", "-b": "URL", "--broker": "URL", "--debug": ""}


def misplaced_option(option: str | None, argv: list[str], command: str | None) -> str:
    """What to type instead when ``option``, one of celeriac's own, follows ``command``:
    ``celeriac worker -A shop.tasks`` (Celery 4's order; Celery 5 says where it goes) was
    only "No such option: -A". ``argv`` is the line after ``celeriac``. Empty for an
    option that is not celeriac's own.

    Example:
        >>> print(misplaced_option("-A", ["worker", "-A", "shop.tasks", "-c", "2"], "worker"))
        -A is an option of celeriac itself: give it before the command, as in:
          celeriac -A shop.tasks worker -c 2
        >>> misplaced_option("--colour", ["status", "--colour"], "status")
        ''
    """
    if option not in _GROUP_OPTIONS:
        return ""
    said = f"{option} is an option of celeriac itself: give it before the command"
    spelled = [i for i, arg in enumerate(argv) if arg == option or arg.startswith(f"{option}=")]
    if not spelled or command is None or command not in argv[: spelled[-1]]:
        return said
    at, metavar = spelled[-1], _GROUP_OPTIONS[option]
    if metavar and "=" not in argv[at]:  # the option and its value, or where it goes
        given = at + 1 < len(argv) and not argv[at + 1].startswith("-")
        moved = argv[at : at + 2] if given else [option, metavar]
        rest = argv[:at] + argv[at + (2 if given else 1) :]
    else:
        moved, rest = argv[at : at + 1], argv[:at] + argv[at + 1 :]
    first = rest.index(command)
    line = " ".join(shlex.quote(arg) for arg in [*rest[:first], *moved, *rest[first:]])
    return f"{said}, as in:\n  celeriac {line}"
