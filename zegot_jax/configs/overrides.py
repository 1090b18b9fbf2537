"""Dotted keys over configs: the one walker that reads, sets, flattens and merges fields.

get(config, "model.ot.epsilon")              # the value, or ABSENT
override(config, {"model.ot.epsilon": 0.1})  # a copy; a mistyped key fails here, not later
flatten({"a": {"b": 1}})                     # {"a.b": 1}
update_from_saved(config, saved_dict)        # a saved run's fields over the current config
"""

from collections.abc import Collection, Mapping
from typing import Any

import ml_collections

ABSENT = object()
_SECTIONS = (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict)

# Sections whose fields are the user's, not the code's: a saved run's copy replaces the current one
# whole (a field of the run's transport options is never dropped for being unknown to this config).
FREE_FORM = ("model.ot.options",)


def get(config: Any, key: str) -> Any:
    """The value at dotted `key` of a config or dict, or `ABSENT`."""
    value = config
    for part in key.split("."):
        if not isinstance(value, _SECTIONS) or part not in value:
            return ABSENT
        value = value[part]
    return value


def flatten(tree: Mapping[str, Any], *, leaves: Collection[str] = (), _prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`; the dotted keys in `leaves` are kept whole."""
    out = {}
    for key, value in tree.items():
        name = f"{_prefix}{key}"
        if isinstance(value, _SECTIONS) and name not in leaves:
            out.update(flatten(value, leaves=leaves, _prefix=name + "."))
        else:
            out[name] = value
    return out


def _section_of(config: ml_collections.ConfigDict, key: str) -> tuple[Any, str]:
    """The section holding dotted `key` and the field's name in it."""
    *path, field = key.split(".")
    section = config
    for part in path:
        section = section.get(part)
        if not isinstance(section, ml_collections.ConfigDict):
            raise KeyError(f"Override {key!r}: {part!r} is not a config section.")
    return section, field


def override(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None
) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-key overrides, e.g. `{'model.ot.epsilon': 0.1}`.

    Raises:
        KeyError: a key that is not a field of the config (typos fail here, not later).
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in (overrides or {}).items():
        section, field = _section_of(config, key)
        if field not in section:
            raise KeyError(f"Override {key!r}: no field {field!r}; known: {sorted(section)}.")
        section[field] = value
    return config


def from_json(value: Any) -> Any:
    """A value read back from JSON with its lists turned back into tuples (as configs hold them)."""
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    return value


def update_from_saved(config: ml_collections.ConfigDict, saved: Mapping[str, Any]) -> None:
    """Overwrites the fields of `config` that `saved` (a saved run's config) also has, in place.

    Fields added to the code after the run was saved keep `config`'s values; fields the code no
    longer has are dropped. Sections in `FREE_FORM` are taken from `saved` as they are.
    """
    for key, value in flatten(from_json(dict(saved)), leaves=FREE_FORM).items():
        if key in FREE_FORM and isinstance(value, dict):
            section, field = _section_of(config, key)
            section[field] = ml_collections.ConfigDict(value)
        elif get(config, key) is not ABSENT:
            section, field = _section_of(config, key)
            section[field] = value
