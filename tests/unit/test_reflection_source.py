"""Reflection's descriptor pool: contracts served with comments, never with a stale schema."""

from __future__ import annotations

import logging
from importlib import resources

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

import zumik_secrets.api.contracts  # noqa: F401  (registers every contract in the default pool)
from zumik_secrets.server import reflection_source

CONTRACT_FILES = {
    f"zumik/secrets/v1/{name}.proto"
    for name in (
        "audit_service",
        "break_glass_service",
        "common",
        "error_reason",
        "fingerprint_service",
        "key_service",
        "options",
        "seal_service",
        "tenant_service",
    )
}


def _packaged() -> bytes:
    package = resources.files("zumik_secrets.server")
    return package.joinpath(reflection_source.DESCRIPTOR_SET_RESOURCE).read_bytes()


def _served(
    pool: reflection_source.CommentedPool, symbol: str
) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    pool.FindFileContainingSymbol(symbol).CopyToProto(proto)
    return proto


def _comments(proto: descriptor_pb2.FileDescriptorProto) -> str:
    return "\n".join(loc.leading_comments for loc in proto.source_code_info.location)


def test_every_contract_file_is_served_with_comments() -> None:
    pool = reflection_source.commented_pool()
    assert pool.commented_files >= CONTRACT_FILES
    served = _served(pool, "zumik.secrets.v1.SealService")
    assert "SealService" in _comments(served)
    assert served.source_code_info.location


def test_a_method_symbol_resolves_to_its_file() -> None:
    pool = reflection_source.commented_pool()
    assert pool.FindFileContainingSymbol("zumik.secrets.v1.SealService.Seal").name == (
        "zumik/secrets/v1/seal_service.proto"
    )
    # The default pool does not resolve methods: that is why grpcurl describe failed on them.
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileContainingSymbol("zumik.secrets.v1.SealService.Seal")


@pytest.mark.parametrize(
    "symbol",
    ["zumik.secrets.v1.SealService.NoSuchMethod", "zumik.secrets.v1.Nothing", "Seal", ""],
)
def test_unknown_symbols_are_not_found(symbol: str) -> None:
    with pytest.raises(KeyError):
        reflection_source.commented_pool().FindFileContainingSymbol(symbol)


def test_dependencies_are_served_with_comments_too() -> None:
    pool = reflection_source.commented_pool()
    seal = pool.FindFileByName("zumik/secrets/v1/seal_service.proto")
    names = {dep.name for dep in seal.dependencies}
    assert "zumik/secrets/v1/options.proto" in names
    for dep in seal.dependencies:
        proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(proto)
        assert proto.name == dep.name
        if dep.name in CONTRACT_FILES:
            assert proto.source_code_info.location, dep.name


def test_a_stale_descriptor_set_is_not_served(caplog: pytest.LogCaptureFixture) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(_packaged())
    for proto in files.file:
        if proto.name == "zumik/secrets/v1/seal_service.proto":
            proto.message_type[0].field.pop()  # the schema on disk lost a field
    with caplog.at_level(logging.WARNING, logger="zumik.server.reflection"):
        loaded = reflection_source.load_commented_files(
            files.SerializeToString(), descriptor_pool.Default()
        )
    assert "zumik/secrets/v1/seal_service.proto" not in loaded
    assert "zumik/secrets/v1/common.proto" in loaded
    assert "differs from the running code" in caplog.text
    # ... and the file is then served from the running code, without comments but complete.
    pool = reflection_source.CommentedPool(loaded)
    served = _served(pool, "zumik.secrets.v1.SealService")
    live = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(served.name).CopyToProto(live)
    assert served == live


def test_the_packaged_set_matches_the_running_code() -> None:
    loaded = reflection_source.load_commented_files(_packaged(), descriptor_pool.Default())
    assert set(loaded) == CONTRACT_FILES
