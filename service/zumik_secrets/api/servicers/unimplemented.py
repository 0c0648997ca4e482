"""Answer UNIMPLEMENTED, clearly, for RPCs whose behaviour has not been built yet."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import descriptor as _descriptor

from zumik_secrets.core.errors import Unimplemented

T = TypeVar("T", bound=type)


def fill_unimplemented(cls: T, service: _descriptor.ServiceDescriptor) -> T:
    """Give ``cls`` a method raising :class:`Unimplemented` for each RPC it does not define."""
    for method in service.methods:
        if method.name in cls.__dict__:
            continue

        def make(name: str) -> Any:
            def not_yet(self: object, request: object, context: object) -> Any:
                raise Unimplemented(
                    f"{service.name}.{name} is part of the API but not available in this "
                    "release of Zumik Secrets yet",
                    reason="NOT_IMPLEMENTED_YET",
                    metadata={"method": f"{service.full_name}/{name}"},
                )

            not_yet.__name__ = name
            return not_yet

        setattr(cls, method.name, make(method.name))
    return cls
