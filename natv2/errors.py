"""The one exception type a user sees: a clear, one-line message, never a deep traceback."""
from __future__ import annotations


class Natv2Error(Exception):
    """Bad input or a failed precondition. The CLI prints ``natv2: error: <message>`` and exits 2.

    The message names the key, file or value at fault and what was expected.
    """
