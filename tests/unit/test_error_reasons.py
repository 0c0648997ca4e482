"""The contract's ErrorReason enum is the one list of reasons the server may send.

A static scan of service/ (tests/reason_scan.py) finds every reason the code can put in
``google.rpc.ErrorInfo.reason``; each must be a value of ``zumik.secrets.v1.ErrorReason``, be
documented with the gRPC code it is really sent with, and every enum value must still be sent
somewhere (no stale entries). The scan itself is tested on a small package with each way of
passing a reason, so a scan that finds nothing cannot pass.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import textwrap
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from zumik.secrets.v1 import error_reason_pb2

import zumik_secrets
from tests import contract_docs
from tests.reason_scan import scan
from zumik_secrets.api import status
from zumik_secrets.core import errors

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "service" / "zumik_secrets"
ENUM_PROTO = REPO / "proto" / "zumik" / "secrets" / "v1" / "error_reason.proto"
PREFIX = "ERROR_REASON_"

ENUM_REASONS = {
    name.removeprefix(PREFIX)
    for name, _ in error_reason_pb2.ErrorReason.items()
    if name != "ERROR_REASON_UNSPECIFIED"
}


@pytest.fixture(scope="module")
def scanned() -> dict[str, set[str]]:
    result = scan(SERVICE)
    assert not result.unresolved, (
        "reasons passed in a way the scan cannot follow (use a literal or a module constant, "
        f"or teach tests/reason_scan.py the new path): {result.unresolved}"
    )
    return result.classes


def _error_classes() -> dict[str, type[errors.ZumikError]]:
    for info in pkgutil.walk_packages(zumik_secrets.__path__, "zumik_secrets."):
        if info.name.split(".")[1] in ("core", "storage", "app", "api"):
            importlib.import_module(info.name)
    found: dict[str, type[errors.ZumikError]] = {}
    todo: list[type[errors.ZumikError]] = [errors.ZumikError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _documented_codes() -> dict[str, str]:
    """reason -> the gRPC code its comment in error_reason.proto starts with."""
    return contract_docs.documented_codes()


def test_the_scan_finds_the_reasons_everyone_knows(scanned: dict[str, set[str]]) -> None:
    # Spot checks across every way a reason is passed: literal keyword, constant, imported
    # helper, class default, policy refusal, the INTERNAL status.
    for reason in (
        "CLAIM_MISSING",
        "CLAIM_BAD_SIGNATURE",
        "MISSING_SCOPE",
        "METHOD_NOT_ALLOWED",
        "UNKNOWN_IDENTITY",
        "INVALID_NAME",
        "SECRET_IN_EVENT",
        "API_KEY_INVALID",
        "INVALID_ARGUMENT",
        "INTERNAL",
    ):
        assert reason in scanned, reason
    assert "ALLOWED" not in scanned
    assert "OK" not in scanned  # an audit outcome reason, never an error


def test_every_reason_the_server_can_send_is_in_the_enum(scanned: dict[str, set[str]]) -> None:
    missing = sorted(set(scanned) - ENUM_REASONS)
    assert not missing, (
        f"reasons the server can send but proto/zumik/secrets/v1/error_reason.proto lacks: "
        f"{missing}; add ERROR_REASON_<REASON> values (with their gRPC code) and run make proto"
    )


def test_every_enum_value_is_still_sent(scanned: dict[str, set[str]]) -> None:
    stale = sorted(ENUM_REASONS - set(scanned))
    assert not stale, f"ErrorReason values no code sends any more (keep, but say so): {stale}"


def test_each_reason_is_documented_with_the_code_it_is_sent_with(
    scanned: dict[str, set[str]],
) -> None:
    classes = _error_classes()
    documented = _documented_codes()
    assert set(documented) == ENUM_REASONS
    wrong: list[str] = []
    for reason, sources in sorted(scanned.items()):
        for source in sources:
            if source == "ErrorInfo":
                code = "INTERNAL"
            else:
                cls = classes[source]
                code = status.status_code_for(cls.__new__(cls)).name  # only the type matters
            if documented.get(reason) != code:
                wrong.append(f"{reason}: documented {documented.get(reason)}, sent as {code}")
    assert not wrong, wrong


def test_the_enum_names_are_the_wire_strings() -> None:
    for name, number in error_reason_pb2.ErrorReason.items():
        assert name.startswith(PREFIX)
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name.removeprefix(PREFIX)), name
        assert (number == 0) == (name == "ERROR_REASON_UNSPECIFIED")
    assert frozenset(ENUM_REASONS) == status.DECLARED_REASONS


def test_no_code_raises_the_base_class_directly() -> None:
    # ZumikError's own reason ("ERROR") is not in the enum because nothing raises it.
    assert scan(SERVICE).base_constructions == []


def test_an_undeclared_reason_is_logged_but_still_sent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zumik.api.status"):
        st = status.to_status(errors.InvalidArgument("bad", reason="NOT_IN_THE_CONTRACT"))
        status.to_status(errors.InvalidArgument("bad", reason="INVALID_NAME"))
    assert [r.getMessage() for r in caplog.records] == [
        "error reason NOT_IN_THE_CONTRACT is not a value of zumik.secrets.v1.ErrorReason"
    ]
    assert st.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _reason_of(st) == "NOT_IN_THE_CONTRACT"  # behaviour unchanged: only logged


def test_a_reason_that_is_not_upper_snake_is_not_logged_verbatim(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="zumik.api.status"):
        status.to_status(errors.InvalidArgument("bad", reason="sk_live_abc def"))
    assert "sk_live" not in caplog.text
    assert "not UPPER_SNAKE" in caplog.text


def _reason_of(st: grpc.Status) -> str:
    raw = dict(st.trailing_metadata)["grpc-status-details-bin"]
    proto = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert proto.details[0].Unpack(info)
    return info.reason


# ------------------------------------------------------------------ the scan can fail

_FIXTURE = {
    "core/__init__.py": "",
    "core/errors.py": """
        class ZumikError(Exception):
            default_reason = "ERROR"
            def __init__(self, message, *, reason=None): ...
        class InvalidArgument(ZumikError):
            default_reason = "DEFAULT_OF_CLASS"
        """,
    "core/reasons.py": """
        REASON_CONST = "FROM_CONSTANT"
        REASON_IMPORTED = "FROM_IMPORT"
        """,
    "app/__init__.py": "",
    "app/use.py": """
        from pkg.core import reasons
        from pkg.core.errors import InvalidArgument
        from pkg.core.reasons import REASON_IMPORTED
        LOCAL = "FROM_LOCAL_CONSTANT"
        def _bad(field, message, reason="FROM_HELPER_DEFAULT"):
            return InvalidArgument(message, reason=reason)
        def _worse(reason):
            return _bad("f", "m", reason)
        class Thing:
            def _method(self, reason):
                return InvalidArgument("m", reason=reason)
            def go(self, flag):
                raise self._method("FROM_METHOD_HELPER")
        def run(flag):
            InvalidArgument("m", reason="FROM_LITERAL")
            InvalidArgument("m", reason=LOCAL)
            InvalidArgument("m", reason=REASON_IMPORTED)
            InvalidArgument("m", reason=reasons.REASON_CONST)
            InvalidArgument("m", reason="FROM_IF_A" if flag else "FROM_IF_B")
            _bad("f", "m", "FROM_HELPER_POSITIONAL")
            _worse("FROM_HELPER_CHAIN")
            record(reason="NOT_AN_ERROR")
            InvalidArgument("m", reason=flag.reason)
        """,
}


def _fixture_package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for rel, text in _FIXTURE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    (root / "__init__.py").write_text("", encoding="utf-8")
    return root


def test_the_scan_follows_every_way_of_passing_a_reason(tmp_path: Path) -> None:
    result = scan(_fixture_package(tmp_path))
    assert result.reasons == {
        "DEFAULT_OF_CLASS",
        "FROM_CONSTANT",
        "FROM_IMPORT",
        "FROM_LOCAL_CONSTANT",
        "FROM_HELPER_DEFAULT",
        "FROM_METHOD_HELPER",
        "FROM_LITERAL",
        "FROM_IF_A",
        "FROM_IF_B",
        "FROM_HELPER_POSITIONAL",
        "FROM_HELPER_CHAIN",
    }
    # A value it cannot follow is reported, not dropped.
    assert [(m, e) for m, e, _ in result.unresolved] == [("pkg.app.use", "flag.reason")]


def test_a_new_reason_in_the_code_fails_the_enum_check(tmp_path: Path) -> None:
    result = scan(_fixture_package(tmp_path))
    assert result.reasons - ENUM_REASONS  # the fixture's reasons are not in the enum


# ------------------------------------------------------------------ the RPC comments


def test_rpc_comments_name_only_declared_reasons_with_their_codes() -> None:
    documented = _documented_codes()
    docs = contract_docs.method_errors()
    assert len(docs) > 30  # every RPC of every service was read
    wrong = [
        f"{method}: {code} {reason} (the enum says {documented.get(reason)})"
        for method, pairs in sorted(docs.items())
        for code, reason in pairs
        if documented.get(reason) != code
    ]
    assert not wrong, wrong
    # Spot checks that the parse sees what the comments say.
    assert ("FAILED_PRECONDITION", "DATA_KEY_PRIMARY") in docs["SealService.DestroyDataKeyVersion"]
    assert ("INVALID_ARGUMENT", "SECRET_IN_EVENT") in docs["AuditService.AppendEvent"]
    assert docs["TenantService.PurgeTenant"] == docs["TenantService.PurgeProject"] != ()


def test_the_common_reasons_are_declared() -> None:
    common = contract_docs.common_reasons()
    assert {"UNKNOWN_IDENTITY", "METHOD_NOT_ALLOWED", "MISSING_SCOPE", "CLAIM_MISSING"} <= common
    assert {"CLAIM_EXPIRED", "CLAIM_BAD_SIGNATURE", "NOT_FOUND", "INTERNAL"} <= common
    assert common <= ENUM_REASONS
    seal = contract_docs.documented_reasons("/zumik.secrets.v1.SealService/Seal")
    assert "CUSTOMER_KEY_UNAVAILABLE" in seal and "DATA_KEY_PRIMARY" not in seal
