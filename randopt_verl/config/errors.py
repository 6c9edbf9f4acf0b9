"""`ConfigError` and the closest-key hint, importable without verl (verl's plugin loader imports
randopt_verl.validate while verl itself is still initialising)."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and says what to change."""


def closest(key: str, known) -> str:
    """' (did you mean X?)' for the known key nearest to `key`, or ''."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""
