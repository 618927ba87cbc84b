"""What Axolotl itself accepts, read from a data file generated from Axolotl's own schema.

`hack/gen-axolotl-keys` writes `data/axolotl_keys.json` from `AxolotlInputConfig` in the Axolotl release
the trainer image pins, so the enums and the unknown-key warnings follow Axolotl instead of our memory.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

DATA_FILE = "axolotl_keys.json"


@cache
def axolotl_keys() -> dict[str, Any]:
    """The parsed data file (cached: it is read once per process)."""
    text = resources.files("axolotl_operator").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def values(name: str) -> tuple[str, ...]:
    """A sorted list from the data file, e.g. `optimizers` or `lr_schedulers`."""
    return tuple(axolotl_keys()[name])


def did_you_mean(key: str, candidates: frozenset[str] | tuple[str, ...]) -> str:
    """A ` (did you mean 'x'?)` suffix for a misspelt key, or an empty string."""
    matches = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.75)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
