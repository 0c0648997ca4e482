"""Claim caching of the verifying providers and change detection of certificate files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from zumik.secrets.v1 import common_pb2

from zumik_secrets_client import errors
from zumik_secrets_client._reload import CertificateFiles
from zumik_secrets_client.credentials import ClaimCache, _VerifyAnswer, static_claim


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _answer(
    wall: float, ttl: float, claim: str = "claim-aaaa", result: int = common_pb2.VERIFY_RESULT_VALID
) -> _VerifyAnswer:
    expire = timestamp_pb2.Timestamp(seconds=int(wall + ttl))
    return result, claim, expire  # type: ignore[return-value]


def test_claim_is_reused_until_half_its_lifetime_then_refreshed() -> None:
    clock = Clock()
    cache = ClaimCache(refresh_fraction=0.5, clock=clock, wall_clock=clock)
    assert cache.fresh() is None
    assert cache.store(_answer(clock.now, 300)) == "claim-aaaa"
    clock.now += 149
    assert cache.fresh() == "claim-aaaa"
    clock.now += 2
    assert cache.fresh() is None  # due: the provider verifies again
    assert cache.refreshes == 1


def test_a_transient_failure_keeps_a_still_valid_claim_but_not_an_expired_one() -> None:
    clock = Clock()
    cache = ClaimCache(refresh_fraction=0.5, clock=clock, wall_clock=clock)
    cache.store(_answer(clock.now, 300))
    clock.now += 200
    down = errors.Unavailable("down")
    assert cache.on_failure(down) == "claim-aaaa"
    clock.now += 100
    with pytest.raises(errors.Unavailable):
        cache.on_failure(down)
    with pytest.raises(errors.PermissionDenied):
        cache.on_failure(errors.PermissionDenied("no"))  # never papered over


def test_a_rejected_credential_drops_the_cached_claim() -> None:
    clock = Clock()
    cache = ClaimCache(refresh_fraction=0.5, clock=clock, wall_clock=clock)
    cache.store(_answer(clock.now, 300))
    with pytest.raises(errors.CredentialRejected) as info:
        cache.store(_answer(clock.now, 0, "", common_pb2.VERIFY_RESULT_REVOKED))
    assert info.value.verify_result == "VERIFY_RESULT_REVOKED"
    clock.now += 200
    with pytest.raises(errors.Unavailable):
        cache.on_failure(errors.Unavailable("down"))


def test_skewed_clock_never_refreshes_more_than_once_a_second() -> None:
    clock = Clock()
    cache = ClaimCache(refresh_fraction=0.5, clock=clock, wall_clock=lambda: clock.now + 900)
    cache.store(_answer(clock.now, 300))  # looks expired to a clock 15 min ahead
    assert cache.fresh() == "claim-aaaa"
    clock.now += 1.01
    assert cache.fresh() is None


def test_static_claim_is_checked_once_without_echo() -> None:
    assert static_claim("abc.def")() == "abc.def"
    with pytest.raises(ValueError) as info:
        static_claim("secret-value\n")
    assert "secret-value" not in str(info.value)


def _write(paths: list[Path], text: str) -> None:
    for path in paths:
        path.write_text(text)


def test_certificate_files_report_changes_at_most_every_interval(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("ca.pem", "c.pem", "k.pem")]
    _write(paths, "one")
    clock = Clock()
    files = CertificateFiles(*paths, check_interval=1.0, clock=clock)
    material = files.load()
    assert material.certificate_chain == b"one"
    assert "one" not in repr(material)  # the key never shows in a repr
    assert not files.changed()
    paths[2].write_text("two-two")
    assert not files.changed()  # within the interval: not even stat'ed
    clock.now += 1.0
    assert files.changed()
    assert files.load().private_key == b"two-two"
    clock.now += 1.0
    assert not files.changed()
    os.utime(paths[0], ns=(1, 1))  # same size, other mtime
    clock.now += 1.0
    assert files.changed()


def test_reloading_off_never_reports_a_change(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("ca.pem", "c.pem", "k.pem")]
    _write(paths, "one")
    files = CertificateFiles(*paths, check_interval=None)
    files.load()
    _write(paths, "changed")
    assert not files.changed()
    with pytest.raises(ValueError):
        CertificateFiles(*paths, check_interval=-1)
