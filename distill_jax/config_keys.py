"""Every stage's defaults are declared once, in its package's `config.py`; a config
that lacks one of those keys is refused up front, naming the key, rather than
read with a second default written into the code that uses it."""
from __future__ import annotations

from typing import Any, Mapping


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in tree.keys():
        value = tree[key]
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            # An empty section (e.g. model.overrides) is free-form: any keys, or none.
            out += _leaves(value, f"{prefix}{key}.") if len(value) else []
        else:
            out.append(f"{prefix}{key}")
    return out


def _has(tree, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if node is None:              # a section set to None is switched off (mesh=None)
            return True
        if not (isinstance(node, Mapping) or hasattr(node, "to_dict")) \
                or part not in node:
            return False
        node = node[part]
    return True


def require_keys(config, defaults, stage: str) -> None:
    """Raises KeyError naming every key of `defaults` that `config` lacks."""
    missing = [k for k in _leaves(defaults) if not _has(config, k)]
    if missing:
        raise KeyError(f"{stage} config lacks {', '.join(missing)}; start it from the stage's "
                       "defaults (each config file's get_config() does) so every setting has "
                       "its one declared default")
