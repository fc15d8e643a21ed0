"""A small TOML writer for ``eventcore config``: enough for the settings'
shape (scalars, tables, arrays of tables, lists and maps of scalars)."""

from __future__ import annotations

import json
from typing import Any


def dumps(data: dict[str, Any]) -> str:
    """``data`` as TOML: top-level maps become ``[tables]``, lists of maps
    ``[[arrays of tables]]``, deeper maps of scalars inline tables."""
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).strip() + "\n"


def _is_table(value: Any, path: tuple[str, ...]) -> bool:
    return isinstance(value, dict) and (
        not path or any(isinstance(v, (dict, list, tuple)) for v in value.values())
    )


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(x, dict) for x in value)
    )


def _table(data: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    nested = []
    for key, value in data.items():
        if value is None:  # TOML has no null: leaving the key out means "default"
            continue
        if _is_table(value, path) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        name = ".".join(_key(k) for k in (*path, key))
        for item in value if _is_table_array(value) else [value]:
            lines += ["", f"[[{name}]]" if _is_table_array(value) else f"[{name}]"]
            _table(item, (*path, key), lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
