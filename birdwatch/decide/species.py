"""Which species a visit may be told as: `events.allow` and `events.block`, checked against the model's own
species when the config and the weights meet (a typo would silently never match).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from birdwatch.config import EventsConfig
from birdwatch.errors import ConfigError


class SpeciesFilter:
    """events.allow / events.block: which species may be told."""

    def __init__(self, allow: Iterable[str], block: Iterable[str]) -> None:
        self.allow = frozenset(allow)
        self.block = frozenset(block)

    def __call__(self, name: str) -> bool:
        return (not self.allow or name in self.allow) and name not in self.block


def check_species_lists(cfg: EventsConfig, class_names: Iterable[str], model: str) -> None:
    """Every name in events.allow/block must be one of the model's species (a typo would silently never match)."""
    known = set(class_names)
    for key in ("allow", "block"):
        for i, name in enumerate(getattr(cfg, key)):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else "species names are as the model spells them"
                raise ConfigError(f"events.{key}[{i}]: {name!r} is not a species of model {model}; {hint}")
