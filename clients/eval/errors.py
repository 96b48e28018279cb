"""The error of ``mlipserve eval discovery``: a problem with its input or its run, told to the user in one line."""

from __future__ import annotations


class EvalError(Exception):
    """Bad input, or a run that cannot go on; the CLI prints ``mlipserve eval: <message>`` and exits non-zero."""
