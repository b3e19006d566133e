"""One-line argparse errors for our flags, and the closest flag for a mistyped one.

argparse prints its whole usage before an error; for nanochat's scripts with our knobs that is
dozens of lines above the one that matters. :func:`one_line_errors` replaces a parser's ``error``:
a mistake about our flags prints one line (a mistyped flag with the closest one we have) and exits
with status 2; any other error goes to the parser's own ``error`` unchanged (an upstream script's
mistakes about its own flags stay upstream's). ``--help`` still prints the usage.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Collection, Iterable
from typing import NoReturn

_UNRECOGNIZED = "unrecognized arguments: "
_ARGUMENT = re.compile(r"^argument ([^\s/:]+)")
_AMBIGUOUS = re.compile(r"^ambiguous option: ([^\s=]+)")


def _norm(flag: str) -> str:
    return "--" + flag.lstrip("-").replace("-", "_")


def closest_flag(flag: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``flag`` (dashes and underscores alike), in its underscore spelling;
    None when nothing is close."""
    spelled = {_norm(c): c for c in candidates if c.startswith("--")}
    match = difflib.get_close_matches(_norm(flag.split("=", 1)[0]), list(spelled), n=1, cutoff=0.6)
    return match[0] if match else None


def error_line(message: str, options: Collection[str], own: Collection[str] | None) -> str | None:
    """The one line for ``message`` when it is about our flags (``own``; None: every flag is ours),
    else None."""
    if message.startswith(_UNRECOGNIZED):
        flags = [a for a in message[len(_UNRECOGNIZED):].split() if a.startswith("--")]
        ours, hints = False, []
        for flag in flags:
            best = closest_flag(flag, options)
            if own is None or flag.startswith("--mc") or (best is not None and best in own):
                ours = True
                if best is not None:
                    hints.append((flag.split("=", 1)[0], best))
        if not ours:
            return None
        if len(hints) == 1:
            return f"{message}; did you mean {hints[0][1]}?"
        return message + "".join(f"; {flag}: did you mean {best}?" for flag, best in hints)
    named = _ARGUMENT.match(message) or _AMBIGUOUS.match(message)
    if own is None or (named is not None and (named.group(1) in own or named.group(1).startswith("--mc"))):
        return message
    return None


def one_line_errors(parser: argparse.ArgumentParser, own: Collection[str] | None = None,
                    options: Callable[[], Collection[str]] | None = None) -> None:
    """Make ``parser`` print our flags' errors as one line, exit status 2 (see the module docstring).
    ``own``: our option strings (None: the parser is ours, every error is); ``options``: every option
    a mistyped flag may be close to (default: the parser's own)."""
    fallback = parser.error

    def error(message: str) -> NoReturn:
        known = options() if options is not None else parser._option_string_actions.keys()
        line = error_line(message, set(known), own)
        if line is None:
            fallback(message)
        print(f"{parser.prog}: error: {line}", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
