"""The ``celeriac`` command line.

Every command prints one clear line and exits non-zero on an error (``--debug`` shows the
traceback); every listing also prints ``--json`` for scripts.
"""

from __future__ import annotations

import sys

from celeriac.cli.main import cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``celeriac`` console script.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="celeriac")


__all__ = ["cli", "main"]
