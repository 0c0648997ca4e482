"""Authorization over real mutual TLS: identities, claims, tenants, scopes, deny by default."""

from __future__ import annotations

import base64
import json
import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import (
    key_service_pb2,
    seal_service_pb2,
    tenant_service_pb2,
)

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info, status_bytes
from zumik_secrets.cli.dev_pki import CertPair, DevPki
from zumik_secrets.core.claims import ClaimSigner
from zumik_secrets.core.primitives import generate_ed25519

pytestmark = pytest.mark.integration

ADMIN = ("tenant.admin",)


def _settings_call(server: RunningServer, role: str, name: str, claim: str | None) -> object:
    stubs = server.stubs(role, claim=claim)
    return stubs.tenants.GetTenantSettings(
        tenant_service_pb2.GetTenantSettingsRequest(name=name), timeout=5
    )


def _fails(fn: object, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return info.value


def test_health_is_serving_and_open_to_any_verified_peer(
    zumik_server: RunningServer, stranger_cert: CertPair
) -> None:
    for role in ("console", stranger_cert):
        stub = health_pb2_grpc.HealthStub(zumik_server.channel(role))
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        answer = stub.Check(
            health_pb2.HealthCheckRequest(service="zumik.secrets.v1.KeyService"), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_identity_the_policy_does_not_name_is_denied(
    zumik_server: RunningServer, stranger_cert: CertPair
) -> None:
    stubs = zumik_server.stubs(stranger_cert)
    err = _fails(
        lambda: stubs.keys.ListSigningKeys(key_service_pb2.ListSigningKeysRequest(), timeout=5),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "UNKNOWN_IDENTITY"
    assert error_info(err).domain == "secrets.zumik.dev"


def test_method_not_granted_is_denied(zumik_server: RunningServer) -> None:
    stubs = zumik_server.stubs("gateway")
    err = _fails(
        lambda: stubs.seal.Open(
            seal_service_pb2.OpenRequest(name="tenants/a/projects/p/secrets/sec_x"), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "METHOD_NOT_ALLOWED"


def test_unknown_method_is_refused(zumik_server: RunningServer, stranger_cert: CertPair) -> None:
    for role, code in (
        (stranger_cert, grpc.StatusCode.PERMISSION_DENIED),
        ("control-plane", grpc.StatusCode.UNIMPLEMENTED),
    ):
        call = zumik_server.channel(role).unary_unary("/zumik.secrets.v1.KeyService/NoSuchThing")
        _fails(lambda call=call: call(b"", timeout=5), code)


def test_rogue_ca_and_missing_certificate_fail_the_handshake(
    zumik_server: RunningServer, rogue_pki: DevPki, dev_pki: DevPki
) -> None:
    stubs = zumik_server.stubs(rogue_pki.client("console"))
    # The rogue client trusts its own CA, so build the channel by hand for the no-cert case.
    _fails(
        lambda: stubs.keys.ListSigningKeys(key_service_pb2.ListSigningKeysRequest(), timeout=3),
        grpc.StatusCode.UNAVAILABLE,
    )
    creds = grpc.ssl_channel_credentials(root_certificates=dev_pki.ca_cert.read_bytes())
    with grpc.secure_channel(zumik_server.target, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        _fails(
            lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=3),
            grpc.StatusCode.UNAVAILABLE,
        )


def test_tenant_scoped_call_without_claim_is_unauthenticated(zumik_server: RunningServer) -> None:
    err = _fails(
        lambda: _settings_call(zumik_server, "console", "tenants/acme/settings", None),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_info(err).reason == "CLAIM_MISSING"


def test_privileged_identity_acts_without_claim(zumik_server: RunningServer) -> None:
    answer = _settings_call(zumik_server, "control-plane", "tenants/acme/settings", None)
    assert answer.settings.name == "tenants/acme/settings"  # type: ignore[attr-defined]


def test_claim_for_tenant_a_reaches_a_and_not_b(zumik_server: RunningServer) -> None:
    claim = zumik_server.mint_claim("tenant-a", "proj", ADMIN)
    answer = _settings_call(zumik_server, "console", "tenants/tenant-a/settings", claim)
    assert answer.settings.name == "tenants/tenant-a/settings"  # type: ignore[attr-defined]
    err = _fails(
        lambda: _settings_call(zumik_server, "console", "tenants/tenant-b/settings", claim),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(err).reason == "NOT_FOUND"
    assert "tenant-b" in err.details()  # the caller's own input, nothing more


def test_foreign_project_answers_exactly_like_a_missing_resource(
    zumik_server: RunningServer,
) -> None:
    claim = zumik_server.mint_claim("tenant-a", "proj", ("secrets.read",))
    stubs = zumik_server.stubs("console", claim=claim)
    name_b = "tenants/tenant-b/projects/proj/secrets/sec_0000000000000000000001"
    name_other_project = "tenants/tenant-a/projects/other/secrets/sec_0000000000000000000001"
    for name in (name_b, name_other_project):
        err = _fails(
            lambda name=name: stubs.seal.GetSecret(
                seal_service_pb2.GetSecretRequest(name=name), timeout=5
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        assert error_info(err).metadata["resource"] == name


def test_claim_without_the_method_scope_is_denied(zumik_server: RunningServer) -> None:
    claim = zumik_server.mint_claim("tenant-a", "proj", ("keys.read",))
    err = _fails(
        lambda: _settings_call(zumik_server, "console", "tenants/tenant-a/settings", claim),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    info = error_info(err)
    assert info.reason == "MISSING_SCOPE"
    assert info.metadata["scope"] == "tenant.admin"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], payload: dict[str, object], signer: ClaimSigner) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    sig = signer._signer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(sig)}"


def _bad_claims(server: RunningServer) -> dict[str, tuple[str, str]]:
    good = server.mint_claim("tenant-a", "proj", ADMIN)
    now = int(time.time())
    signer = server.runtime.claim_keys.signer
    head, body, sig = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
    flipped[0] ^= 1
    stranger = ClaimSigner(signer.kid, generate_ed25519(), signer.issuer, signer.audience)
    unknown_kid = ClaimSigner("sk_unknown", generate_ed25519(), signer.issuer, signer.audience)
    header = {"alg": "EdDSA", "typ": "JWT", "kid": signer.kid}
    return {
        "expired": (
            _forge(
                header, {**payload, "iat": now - 600, "nbf": now - 600, "exp": now - 300}, signer
            ),
            "CLAIM_EXPIRED",
        ),
        "future": (
            _forge(
                header, {**payload, "iat": now + 120, "nbf": now + 120, "exp": now + 300}, signer
            ),
            "CLAIM_NOT_YET_VALID",
        ),
        "wrong-audience": (
            _forge(header, {**payload, "aud": "someone-else"}, signer),
            "CLAIM_WRONG_AUDIENCE",
        ),
        "too-long": (
            _forge(header, {**payload, "exp": payload["iat"] + 3600}, signer),
            "CLAIM_LIFETIME_TOO_LONG",
        ),
        "unknown-kid": (
            unknown_kid.mint("tenant-a", "proj", "s", ADMIN, now, 60)[0],
            "CLAIM_UNKNOWN_KEY",
        ),
        "alg-none": (
            _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": signer.kid}).encode())
            + f".{body}.",
            "CLAIM_ALG_NOT_ALLOWED",
        ),
        "byte-flipped": (f"{head}.{body}.{_b64(bytes(flipped))}", "CLAIM_BAD_SIGNATURE"),
        "other-private-key": (
            stranger.mint("tenant-a", "proj", "s", ADMIN, now, 60)[0],
            "CLAIM_BAD_SIGNATURE",
        ),
        "garbage": ("not-a-claim", "CLAIM_MALFORMED"),
    }


def test_every_bad_claim_is_unauthenticated_with_its_reason(zumik_server: RunningServer) -> None:
    for case, (claim, reason) in _bad_claims(zumik_server).items():
        err = _fails(
            lambda claim=claim: _settings_call(
                zumik_server, "console", "tenants/tenant-a/settings", claim
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert error_info(err).reason == reason, case
        assert claim not in err.details(), case


def test_bad_claim_is_refused_even_for_privileged_identities(zumik_server: RunningServer) -> None:
    err = _fails(
        lambda: _settings_call(zumik_server, "control-plane", "tenants/a/settings", "x.y.z"),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error_info(err).reason == "CLAIM_MALFORMED"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "tenants",
        "tenants/",
        "tenants/UPPER/settings",
        "projects/x",
        "tenants/a b/settings",
        "tenants/" + "a" * 70 + "/settings",
        "x" * 5000,
    ],
)
def test_malformed_resource_names_are_invalid_argument(
    zumik_server: RunningServer, name: str
) -> None:
    err = _fails(
        lambda: _settings_call(zumik_server, "control-plane", name, None),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason in {"FIELD_REQUIRED", "INVALID_NAME"}


def test_purge_confirmation_is_checked_after_authorization(zumik_server: RunningServer) -> None:
    stubs = zumik_server.stubs("control-plane")
    err = _fails(
        lambda: stubs.tenants.PurgeProject(
            tenant_service_pb2.PurgeProjectRequest(
                name="tenants/a/projects/p", confirm="tenants/a/projects/q"
            ),
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "CONFIRMATION_MISMATCH"


def test_missing_and_foreign_answers_are_byte_identical(zumik_server: RunningServer) -> None:
    """Cross-tenant NOT_FOUND carries exactly the details a missing resource would."""
    name = "tenants/tenant-b/projects/proj/secrets/sec_0000000000000000000001"
    claim_a = zumik_server.mint_claim("tenant-a", "proj", ("secrets.read",))
    stubs_a = zumik_server.stubs("console", claim=claim_a)
    foreign = _fails(
        lambda: stubs_a.seal.GetSecret(seal_service_pb2.GetSecretRequest(name=name), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    from zumik_secrets.api.status import to_status
    from zumik_secrets.core.errors import resource_not_found

    expected = to_status(resource_not_found(name))
    from google.rpc import status_pb2

    proto = status_pb2.Status()
    proto.ParseFromString(dict(expected.trailing_metadata)["grpc-status-details-bin"])
    assert status_bytes(foreign) == proto.SerializeToString(deterministic=True)


def test_telemetry_mode_update_round_trips(zumik_server: RunningServer) -> None:
    stubs = zumik_server.stubs("control-plane")
    request = tenant_service_pb2.UpdateTenantSettingsRequest(
        name="tenants/acme/settings",
        settings=tenant_service_pb2.TenantSettings(
            telemetry_mode=tenant_service_pb2.TELEMETRY_MODE_RICH
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
    )
    answer = stubs.tenants.UpdateTenantSettings(request, timeout=5)
    assert answer.settings.telemetry_mode == tenant_service_pb2.TELEMETRY_MODE_RICH
    again = _settings_call(zumik_server, "control-plane", "tenants/acme/settings", None)
    assert again.settings.telemetry_mode == tenant_service_pb2.TELEMETRY_MODE_RICH  # type: ignore[attr-defined]
    request.update_mask.paths[:] = ["audit_retention"]  # named but unset: back to the default
    reset = stubs.tenants.UpdateTenantSettings(request, timeout=5)
    assert reset.settings.audit_retention.seconds == 400 * 86400
    assert reset.settings.telemetry_mode == tenant_service_pb2.TELEMETRY_MODE_RICH
    request.update_mask.paths[:] = []
    _fails(
        lambda: stubs.tenants.UpdateTenantSettings(request, timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
