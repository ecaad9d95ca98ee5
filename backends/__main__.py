"""Command line: ``python -m backends COMMAND``.

``compare`` and ``list`` (:mod:`backends.compare`); every other command is a module of its
own, listed in ``_COMMANDS`` and imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys

#: Commands with a module of their own: name -> "module:function" taking ``argv`` (the
#: arguments after the command's name) and returning the exit status.
_COMMANDS: dict[str, str] = {
    "frontier": "backends.compare.frontier:main",
    "drift": "backends.drift:main",
}
#: One line each for ``python -m backends --help``.
COMMAND_HELP: dict[str, str] = {
    "frontier": "the fastest backend and setting for each accuracy at your N",
    "drift": "a leapfrog run with every backend: energy and momentum conservation",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command named by the first argument; return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _COMMANDS:
        module, _, func = _COMMANDS[argv[0]].partition(":")
        return getattr(importlib.import_module(module), func)(argv[1:])
    if argv and not argv[0].startswith("-") and argv[0] not in ("compare", "list"):
        names = ", ".join(repr(c) for c in ("compare", "list", *_COMMANDS))
        print(
            f"usage: python -m backends COMMAND ...\npython -m backends: error: unknown command "
            f"{argv[0]!r} (choose from {names}; python -m backends --help)",
            file=sys.stderr,
        )
        return 2
    from backends.compare import main as compare_main

    return compare_main(argv)


if __name__ == "__main__":
    sys.exit(main())
