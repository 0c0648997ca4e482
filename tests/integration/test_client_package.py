"""The client package against a real Zumik Secrets server over real mTLS (sync and aio).

What a service team relies on: seal/open with a claim that refreshes itself across expiry (the
server's claim TTL cut to 2 s), typed errors for what the server really answers, certificate
files rotated under a running caller, and the aio client behaving the same.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from zumik.secrets.v1 import (
    key_service_pb2,
    key_service_pb2_grpc,
    seal_service_pb2,
    seal_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)

import zumik_secrets_client
from tests import fix_leaks
from tests.fix_server import RunningServer, ServerFactory
from zumik_secrets.cli.dev_pki import CertPair
from zumik_secrets_client import aio, errors

pytestmark = pytest.mark.integration

TENANT = "acme"
PARENT = f"tenants/{TENANT}/projects/web"
SCOPES = ["secrets.seal", "secrets.open", "secrets.read", "keys.read"]
LIST = seal_service_pb2.ListSecretsRequest(parent=PARENT)
PLAINTEXT = b"sk-test-provider-key-0123456789"


def _connect(server: RunningServer, who: str | CertPair, **kwargs: Any) -> grpc.Channel:
    pair = server.pki.client(who) if isinstance(who, str) else who
    channel = zumik_secrets_client.connect(
        server.target,
        ca_file=server.pki.ca_cert,
        cert_file=pair.cert,
        key_file=pair.key,
        **kwargs,
    )
    return fix_leaks.capture(channel)  # requests, answers and errors join the leak sweep


def _aio_connect(server: RunningServer, who: str | CertPair, **kwargs: Any) -> grpc.aio.Channel:
    pair = server.pki.client(who) if isinstance(who, str) else who
    return aio.connect(
        server.target, ca_file=server.pki.ca_cert, cert_file=pair.cert, key_file=pair.key, **kwargs
    )


def _api_key(server: RunningServer, scopes: list[str] = SCOPES) -> tuple[str, str]:
    with _connect(server, "control-plane") as channel:
        reply = key_service_pb2_grpc.KeyServiceStub(channel).CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(parent=PARENT, display_name="ci", scopes=scopes)
        )
    return reply.api_key.name, reply.raw_key


@pytest.fixture
def short_claims(zumik_server_factory: ServerFactory) -> RunningServer:
    """A server minting 2 s claims (it also refuses longer ones); 5 s leeway on expiry."""
    return zumik_server_factory(ZUMIK_CLAIM_TTL=2)


@pytest.fixture
def server(zumik_server: RunningServer) -> RunningServer:
    return zumik_server


LEEWAY = 5.0  # the server's clock-skew allowance on exp (core/claims.py)


# ---------------------------------------------------------------- happy path, refresh


def test_seal_and_open_with_a_refreshing_api_key_claim(short_claims: RunningServer) -> None:
    server = short_claims
    _, raw_key = _api_key(server)
    with (
        _connect(server, "gateway") as gateway,
        _connect(server, "console", claim=None) as probe,
    ):
        provider = zumik_secrets_client.ApiKeyClaimProvider(gateway, raw_key)
        with (
            _connect(server, "console", claim=provider) as console,
            _connect(server, "executor", claim=provider) as executor,
        ):
            seal = seal_service_pb2_grpc.SealServiceStub(console)
            opener = seal_service_pb2_grpc.SealServiceStub(executor)
            name = seal.Seal(
                seal_service_pb2.SealRequest(
                    parent=PARENT, display_name="openai", plaintext=PLAINTEXT
                )
            ).secret.name
            first_claim = provider()
            began = time.monotonic()
            # Calls on the same channels until well past the first claim's expiry (2 s TTL +
            # 5 s leeway): every call passes.
            while time.monotonic() - began < 2.0 + LEEWAY + 1.0:
                reply = opener.Open(seal_service_pb2.OpenRequest(name=name))
                assert reply.plaintext == PLAINTEXT
                time.sleep(0.2)
            assert provider.refreshes >= 6, provider.refreshes  # refreshed at half-life
            assert repr(provider).count(raw_key) == 0

        # The first claim, sent as is, has expired by now: the refresh was needed.
        stub = seal_service_pb2_grpc.SealServiceStub(probe)
        with pytest.raises(errors.Unauthenticated) as info:
            stub.GetSecret(
                seal_service_pb2.GetSecretRequest(name=name),
                metadata=(("zumik-claim", first_claim),),
            )
        assert isinstance(info.value, errors.ClaimExpired)
        assert info.value.reason == "CLAIM_EXPIRED"


def test_revoked_key_stops_the_provider_with_credential_rejected(server: RunningServer) -> None:
    """5-minute claims: no refresh is due, so only the server's refusal of the cached claim
    (CLAIM_REVOKED, within about 1 s of the revocation) can make the provider verify again."""
    key_name, raw_key = _api_key(server)
    with _connect(server, "gateway") as gateway:
        provider = zumik_secrets_client.ApiKeyClaimProvider(gateway, raw_key)
        with _connect(server, "console", claim=provider) as console:
            seal = seal_service_pb2_grpc.SealServiceStub(console)
            seal.ListSecrets(LIST)
            assert provider.refreshes == 1
            with _connect(server, "control-plane") as cp:
                key_service_pb2_grpc.KeyServiceStub(cp).RevokeApiKey(
                    key_service_pb2.RevokeApiKeyRequest(name=key_name)
                )
            deadline = time.monotonic() + 15.0
            while True:
                try:
                    seal.ListSecrets(LIST)
                except errors.ClaimRevoked:
                    break
                assert time.monotonic() < deadline, "the revocation never reached the claim"
                time.sleep(0.1)
            assert provider.refreshes == 1
            # The provider forgot the refused claim; the next call verifies and learns why.
            with pytest.raises(errors.CredentialRejected) as info:
                seal.ListSecrets(LIST)
            assert info.value.verify_result == "VERIFY_RESULT_REVOKED"
            assert isinstance(info.value, errors.Unauthenticated)
            assert provider.refreshes == 2


def test_aio_seal_open_and_refresh(short_claims: RunningServer) -> None:
    server = short_claims
    _, raw_key = _api_key(server)
    fix_leaks.REGISTRY.add(raw_key, "aio test key")

    async def run() -> None:
        async with _aio_connect(server, "gateway") as gateway:
            provider = aio.ApiKeyClaimProvider(gateway, raw_key)
            async with (
                _aio_connect(server, "console", claim=provider) as console,
                _aio_connect(server, "executor", claim=provider) as executor,
            ):
                seal = seal_service_pb2_grpc.SealServiceStub(console)
                opener = seal_service_pb2_grpc.SealServiceStub(executor)
                sealed = await seal.Seal(
                    seal_service_pb2.SealRequest(
                        parent=PARENT, display_name="k", plaintext=PLAINTEXT
                    )
                )
                first_claim = await provider()
                began = time.monotonic()
                while time.monotonic() - began < 2.0 + LEEWAY + 1.0:
                    reply = await opener.Open(seal_service_pb2.OpenRequest(name=sealed.secret.name))
                    assert reply.plaintext == PLAINTEXT
                    await asyncio.sleep(0.2)
                assert provider.refreshes >= 6, provider.refreshes
                with pytest.raises(errors.ClaimExpired):
                    await seal.GetSecret(
                        seal_service_pb2.GetSecretRequest(name=sealed.secret.name),
                        metadata=(("zumik-claim", first_claim),),
                    )

    asyncio.run(run())


# ---------------------------------------------------------------- errors the server answers

Scenario = tuple[
    str, str | CertPair, str | None, Callable[[Any], Any], type[errors.ZumikError], str
]


def _scenarios(server: RunningServer, claim: str, stranger: CertPair) -> list[Scenario]:
    other = "tenants/other/projects/web/secrets/sec_0000000000000000000001"
    settings = tenant_service_pb2.GetTenantSettingsRequest(name=f"tenants/{TENANT}/settings")
    no_scope = server.mint_claim(TENANT, "web", ("keys.read",))
    expired, _ = server.runtime.claim_keys.signer.mint(
        TENANT, "web", "key_test", ("secrets.read",), int(time.time()) - 400, 300
    )
    fix_leaks.REGISTRY.add(expired, "expired claim minted by a test")

    def tenants(ch: Any) -> Any:
        return tenant_service_pb2_grpc.TenantServiceStub(ch)

    def seal(ch: Any) -> Any:
        return seal_service_pb2_grpc.SealServiceStub(ch)

    return [
        ("no claim", "console", None, lambda ch: tenants(ch).GetTenantSettings(settings),
         errors.Unauthenticated, "CLAIM_MISSING"),
        ("garbage claim", "console", "not-a-claim-at-all-xxxxxxxx",
         lambda ch: tenants(ch).GetTenantSettings(settings),
         errors.Unauthenticated, "CLAIM_MALFORMED"),
        ("expired claim", "console", expired,
         lambda ch: seal(ch).GetSecret(seal_service_pb2.GetSecretRequest(name=other)),
         errors.Unauthenticated, "CLAIM_EXPIRED"),
        ("another tenant's secret", "executor", claim,
         lambda ch: seal(ch).Open(seal_service_pb2.OpenRequest(name=other)),
         errors.NotFound, "NOT_FOUND"),
        ("method not in policy", "gateway", claim,
         lambda ch: seal(ch).Seal(seal_service_pb2.SealRequest(parent=PARENT, plaintext=b"x")),
         errors.PermissionDenied, "METHOD_NOT_ALLOWED"),
        ("unknown identity", stranger, claim,
         lambda ch: tenants(ch).GetTenantSettings(settings),
         errors.PermissionDenied, "UNKNOWN_IDENTITY"),
        ("claim without the scope", "console", no_scope,
         lambda ch: seal(ch).ListSecrets(seal_service_pb2.ListSecretsRequest(parent=PARENT)),
         errors.PermissionDenied, "MISSING_SCOPE"),
        ("bad page token", "console", claim,
         lambda ch: seal(ch).ListSecrets(
             seal_service_pb2.ListSecretsRequest(parent=PARENT, page_token="garbage-token")
         ),
         errors.InvalidArgument, "INVALID_PAGE_TOKEN"),
        ("malformed name", "console", claim,
         lambda ch: seal(ch).GetSecret(seal_service_pb2.GetSecretRequest(name="secrets/x")),
         errors.InvalidArgument, "INVALID_NAME"),
    ]  # fmt: skip


@pytest.fixture
def stranger(stranger_cert: CertPair) -> CertPair:
    return stranger_cert


def _check(err: BaseException, cls: type[errors.ZumikError], reason: str) -> None:
    assert isinstance(err, cls), (type(err).__mro__, err)
    assert isinstance(err, errors.reason_class(reason)), (type(err).__mro__, err)
    assert err.reason == reason and err.domain == errors.ERROR_DOMAIN
    assert err.code() == cls.status_code


def test_errors_from_the_real_server_arrive_as_their_classes(
    server: RunningServer, stranger: CertPair
) -> None:
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES))
    seen: list[str] = []
    for label, who, scenario_claim, call, cls, reason in _scenarios(server, claim, stranger):
        with _connect(server, who, claim=scenario_claim) as channel:
            with pytest.raises(errors.ZumikError) as info:
                call(channel)
            _check(info.value, cls, reason)
            seen.append(label)
    assert len(seen) == len(_scenarios(server, claim, stranger))


def test_aio_errors_match_the_sync_ones(server: RunningServer, stranger: CertPair) -> None:
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES))
    scenarios = _scenarios(server, claim, stranger)
    sync_types: list[type[BaseException]] = []
    for _, who, scenario_claim, call, _, _ in scenarios:
        with _connect(server, who, claim=scenario_claim) as channel:
            with pytest.raises(errors.ZumikError) as info:
                call(channel)
            sync_types.append(type(info.value))

    async def run() -> list[type[BaseException]]:
        found: list[type[BaseException]] = []
        for _, who, scenario_claim, call, cls, reason in scenarios:
            async with _aio_connect(server, who, claim=scenario_claim) as channel:
                with pytest.raises(errors.ZumikError) as info:
                    await call(channel)
                _check(info.value, cls, reason)
                found.append(type(info.value))
        return found

    assert asyncio.run(run()) == sync_types  # the very same classes


def test_field_violations_and_metadata_are_decoded(server: RunningServer) -> None:
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES))
    with _connect(server, "console", claim=claim) as channel:
        seal = seal_service_pb2_grpc.SealServiceStub(channel)
        with pytest.raises(errors.InvalidArgument) as info:
            seal.Seal(seal_service_pb2.SealRequest(parent=PARENT, display_name="x"))
        assert info.value.field_violations, info.value
        assert all(v.field for v in info.value.field_violations)
        other = "tenants/acme/projects/web/secrets/sec_0000000000000000000001"
        with pytest.raises(errors.NotFound) as missing:
            seal.GetSecret(seal_service_pb2.GetSecretRequest(name=other))
        assert missing.value.metadata.get("resource") == other


# ---------------------------------------------------------------- certificate rotation


class _SecretVolume:
    """Files laid out as kubelet mounts a Secret: tls.crt -> ..data/tls.crt, ..data -> dir.

    ``rotate`` writes a new timestamped directory and swaps the ``..data`` link atomically.
    """

    def __init__(self, root: Path, ca: Path) -> None:
        self.root = root
        self.ca = ca
        self.n = 0
        root.mkdir()
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    def rotate(self, pair: CertPair) -> None:
        self.n += 1
        new = self.root / f"..2026_{self.n:04d}"
        new.mkdir()
        (new / "tls.crt").write_bytes(pair.cert.read_bytes())
        (new / "tls.key").write_bytes(pair.key.read_bytes())
        link = self.root / "..data_tmp"
        link.symlink_to(new.name)
        os.replace(link, self.root / "..data")

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"


def test_rotated_certificate_files_are_used_without_restarting_the_caller(
    server: RunningServer, stranger: CertPair, tmp_path: Path
) -> None:
    volume = _SecretVolume(tmp_path / "tls", server.pki.ca_cert)
    volume.rotate(stranger)  # first mount: an identity no policy names
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES), ttl=300)
    channel = fix_leaks.capture(
        zumik_secrets_client.connect(
            server.target,
            ca_file=volume.ca,
            cert_file=volume.cert,
            key_file=volume.key,
            claim=claim,
            certificate_check_interval=0.0,
        )
    )
    settings = tenant_service_pb2.GetTenantSettingsRequest(name=f"tenants/{TENANT}/settings")
    seal = seal_service_pb2_grpc.SealServiceStub(channel)
    tenants = tenant_service_pb2_grpc.TenantServiceStub(channel)
    request = seal_service_pb2.SealRequest(parent=PARENT, display_name="r", plaintext=b"v" * 16)
    with channel:
        with pytest.raises(errors.PermissionDenied) as info:
            tenants.GetTenantSettings(settings)
        assert info.value.reason == "UNKNOWN_IDENTITY"

        volume.rotate(server.pki.client("console"))  # cert-manager renews: now the console
        seal.ListSecrets(LIST)  # same channel, same stubs
        seal.Seal(request)

        volume.rotate(server.pki.client("executor"))  # and again: the executor may not Seal
        with pytest.raises(errors.PermissionDenied) as denied:
            seal.Seal(request)
        assert denied.value.reason == "METHOD_NOT_ALLOWED"


def test_aio_channel_picks_up_rotated_certificates(
    server: RunningServer, stranger: CertPair, tmp_path: Path
) -> None:
    volume = _SecretVolume(tmp_path / "tls", server.pki.ca_cert)
    volume.rotate(stranger)
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES), ttl=300)
    settings = tenant_service_pb2.GetTenantSettingsRequest(name=f"tenants/{TENANT}/settings")

    async def run() -> None:
        async with aio.connect(
            server.target,
            ca_file=volume.ca,
            cert_file=volume.cert,
            key_file=volume.key,
            claim=claim,
            certificate_check_interval=0.0,
        ) as channel:
            tenants = tenant_service_pb2_grpc.TenantServiceStub(channel)
            with pytest.raises(errors.PermissionDenied):
                await tenants.GetTenantSettings(settings)
            volume.rotate(server.pki.client("console"))
            await seal_service_pb2_grpc.SealServiceStub(channel).ListSecrets(LIST)

    asyncio.run(run())


def test_a_half_written_rotation_keeps_the_working_certificate(
    server: RunningServer, tmp_path: Path
) -> None:
    console: CertPair = server.pki.client("console")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(console.cert.read_bytes())
    key.write_bytes(console.key.read_bytes())
    claim = server.mint_claim(TENANT, "web", tuple(SCOPES), ttl=300)
    with zumik_secrets_client.connect(
        server.target,
        ca_file=server.pki.ca_cert,
        cert_file=cert,
        key_file=key,
        claim=claim,
        certificate_check_interval=0.0,
    ) as channel:
        seal = seal_service_pb2_grpc.SealServiceStub(channel)
        seal.ListSecrets(LIST)
        key.unlink()  # a writer that removes before it writes: the channel keeps what works
        seal.ListSecrets(LIST)


def test_session_providers_sync_and_aio_refresh_and_stop_at_revocation(
    short_claims: RunningServer,
) -> None:
    server = short_claims
    with _connect(server, "control-plane") as cp:
        keys = key_service_pb2_grpc.KeyServiceStub(cp)
        created = keys.CreateSession(
            key_service_pb2.CreateSessionRequest(
                parent=PARENT, user_subject="user-7", scopes=["secrets.read"]
            )
        )
    token = created.token
    with _connect(server, "gateway") as gateway:
        provider = zumik_secrets_client.SessionClaimProvider(
            gateway, token, required_scopes=["secrets.read"]
        )
        with _connect(server, "console", claim=provider) as console:
            seal = seal_service_pb2_grpc.SealServiceStub(console)
            began = time.monotonic()
            while time.monotonic() - began < 2.5:  # past one claim lifetime
                seal.ListSecrets(LIST)
                time.sleep(0.2)
            assert provider.refreshes >= 2

            async def aio_calls() -> int:
                async with _aio_connect(server, "gateway") as aio_gateway:
                    aio_provider = aio.SessionClaimProvider(aio_gateway, token)
                    async with _aio_connect(server, "console", claim=aio_provider) as channel:
                        aio_seal = seal_service_pb2_grpc.SealServiceStub(channel)
                        began = time.monotonic()
                        while time.monotonic() - began < 2.5:
                            await aio_seal.ListSecrets(LIST)
                            await asyncio.sleep(0.2)
                    return aio_provider.refreshes

            assert asyncio.run(aio_calls()) >= 2

            with _connect(server, "control-plane") as cp:
                key_service_pb2_grpc.KeyServiceStub(cp).RevokeSession(
                    key_service_pb2.RevokeSessionRequest(name=created.session.name)
                )
            deadline = time.monotonic() + 15.0
            while True:
                try:
                    seal.ListSecrets(LIST)
                except errors.ClaimRevoked:
                    pass  # the server refused the cached claim: the next call verifies again
                except errors.CredentialRejected as exc:
                    assert exc.verify_result == "VERIFY_RESULT_REVOKED"
                    break
                assert time.monotonic() < deadline, "session revocation never reached the provider"
                time.sleep(0.2)
