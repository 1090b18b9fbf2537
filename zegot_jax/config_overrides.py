"""Dotted-key changes to a config, checked against its fields (typos fail here, not later)."""

from collections.abc import Mapping
from typing import Any

import ml_collections


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None
             ) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-key overrides, e.g. `{'model.ot.epsilon': 0.1}`.

    Raises:
      KeyError: a key that is not a field of the config (typos fail here, not later).
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in (overrides or {}).items():
        *path, field = key.split(".")
        section = config
        for part in path:
            section = section.get(part)
            if not isinstance(section, ml_collections.ConfigDict):
                raise KeyError(f"Override {key!r}: {part!r} is not a config section.")
        if field not in section:
            raise KeyError(f"Override {key!r}: no field {field!r}; known: {sorted(section)}.")
        section[field] = value
    return config
