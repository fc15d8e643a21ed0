"""Hypothesis strategies for every event type."""

from __future__ import annotations

import typing

import msgspec
from hypothesis import strategies as st

from eventcore.events import ALL_EVENT_TYPES, Event

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False)


def for_type(tp: object) -> st.SearchStrategy[typing.Any]:
    """A strategy for one field type of an event (msgpack-representable values)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return json_values
    if tp is int:
        return ints
    if tp is float:
        return floats
    if tp is str:
        return st.text(max_size=30)
    if tp is bool:
        return st.booleans()
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), for_type(args[1]), max_size=4)
    if origin is tuple:
        return st.lists(for_type(args[0]), max_size=3).map(tuple)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of([for_type(a) for a in args])
    if tp is type(None):
        return st.none()
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return struct_of(tp)
    if isinstance(tp, type) and issubclass(tp, __import__("enum").Enum):
        return st.sampled_from(list(tp))
    raise NotImplementedError(f"no strategy for {tp!r}")


def struct_of(cls: type[msgspec.Struct]) -> st.SearchStrategy[typing.Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: for_type(hints[f.name]) for f in msgspec.structs.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


events: st.SearchStrategy[Event] = st.one_of([struct_of(cls) for cls in ALL_EVENT_TYPES])
