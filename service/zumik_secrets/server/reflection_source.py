"""Server reflection that serves the contracts with their source comments.

The generated ``_pb2`` modules register descriptors without comments, and grpcio-reflection
serializes what the descriptor pool holds, so ``grpcurl describe`` would show bare signatures.
``make proto`` also writes ``contracts.binpb`` (next to this module): a FileDescriptorSet of the
contracts compiled with ``--include_source_info``. :class:`CommentedPool` wraps the default pool
and, when reflection serializes one of those files, hands out the stored copy, comments
included; every other lookup goes to the default pool.

A stored file is used only if it describes exactly what the running code registered (compared
without comments and JSON names), so a stale ``contracts.binpb`` can never make reflection lie
about the schema; it only loses the comments (and a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

_LOG = logging.getLogger("zumik.server.reflection")

DESCRIPTOR_SET_RESOURCE = "contracts.binpb"


def _shape(proto: descriptor_pb2.FileDescriptorProto) -> bytes:
    """The schema of a file without what the pool drops (comments, JSON names)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    copy.ClearField("source_code_info")
    for message in copy.message_type:
        _strip_json_names(message)
    for extension in copy.extension:
        extension.ClearField("json_name")
    return copy.SerializeToString(deterministic=True)


def _strip_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for item in (*message.field, *message.extension):
        item.ClearField("json_name")
    for nested in message.nested_type:
        _strip_json_names(nested)


def load_commented_files(
    data: bytes, pool: descriptor_pool.DescriptorPool
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files of a serialized FileDescriptorSet that match ``pool``, by file name.

    A file the pool does not know, or knows in another shape, is left out with a warning.
    """
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        try:
            registered = pool.FindFileByName(proto.name)
        except KeyError:
            _LOG.warning("reflection: %s is not registered; served without it", proto.name)
            continue
        live = descriptor_pb2.FileDescriptorProto()
        registered.CopyToProto(live)
        if _shape(live) != _shape(proto):
            _LOG.warning(
                "reflection: %s in %s differs from the running code (run make proto); "
                "served without comments",
                proto.name,
                DESCRIPTOR_SET_RESOURCE,
            )
            continue
        # Served as the running code has it, plus comments: protoc's descriptor set fills in
        # every field's json_name, which makes grpcurl print lowerCamelCase names instead of the
        # proto names it printed before (and that operators' scripts and README read).
        for message in proto.message_type:
            _strip_json_names(message)
        for extension in proto.extension:
            extension.ClearField("json_name")
        files[proto.name] = proto
    return files


class _CommentedFile:
    """A FileDescriptor stand-in whose ``CopyToProto`` includes the source comments."""

    def __init__(
        self, real: FileDescriptor, files: Mapping[str, descriptor_pb2.FileDescriptorProto]
    ) -> None:
        self._real = real
        self._files = files

    @property
    def name(self) -> str:
        return str(self._real.name)

    @property
    def dependencies(self) -> Sequence[_CommentedFile]:
        return [_CommentedFile(dep, self._files) for dep in self._real.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        stored = self._files.get(self._real.name)
        if stored is None:
            self._real.CopyToProto(proto)
        else:
            proto.CopyFrom(stored)


class CommentedPool:
    """A descriptor pool for grpc_reflection whose file answers carry source comments."""

    def __init__(
        self,
        files: Mapping[str, descriptor_pb2.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._files = dict(files)

    @property
    def commented_files(self) -> frozenset[str]:
        """Names of the files served with comments."""
        return frozenset(self._files)

    def FindFileByName(self, name: str) -> _CommentedFile:
        return _CommentedFile(self._pool.FindFileByName(name), self._files)

    def FindFileContainingSymbol(self, symbol: str) -> _CommentedFile:
        """The file defining ``symbol``; unlike the default pool, also finds RPC methods.

        ``grpcurl describe pkg.Service.Method`` asks for the method's own name, which the
        default pool does not resolve.

        Raises:
            KeyError: no such symbol.
        """
        try:
            found = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)  # KeyError if not a service
            if method not in service.methods_by_name:
                raise
            found = service.file
        return _CommentedFile(found, self._files)

    def __getattr__(self, attr: str) -> Any:
        # FindMessageTypeByName, FindExtensionByNumber, FindAllExtensions: plain lookups.
        return getattr(self._pool, attr)


def commented_pool() -> CommentedPool:
    """The pool to give ``reflection.enable_server_reflection(..., pool=...)``.

    Without the packaged descriptor set (or if it cannot be read) reflection still works, just
    without comments.
    """
    pool = descriptor_pool.Default()
    try:
        data = resources.files(__package__).joinpath(DESCRIPTOR_SET_RESOURCE).read_bytes()
    except OSError:
        _LOG.warning("reflection: %s is missing; served without comments", DESCRIPTOR_SET_RESOURCE)
        return CommentedPool({}, pool)
    return CommentedPool(load_commented_files(data, pool), pool)
