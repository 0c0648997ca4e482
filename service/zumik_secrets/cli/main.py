"""`zumik-secrets`: the command line of the service.

Commands: serve, migrate, keygen, rewrap-data-keys, health, dev-pki, dev-setup, audit verify,
purge verify-receipt, retention run, signing-keys list/retire.
Configuration comes from `ZUMIK_*` environment variables (and an optional TOML file named by
ZUMIK_CONFIG); `--help` lists them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from zumik_secrets.cli import audit_verify, lifecycle, signing_keys, verify_release
from zumik_secrets.cli.dev_pki import DEFAULT_ROLES, generate_dev_pki
from zumik_secrets.core.errors import ZumikError
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.server.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_LISTEN,
    DEV_DIR,
    ServerConfig,
    settings_help,
)

_EPILOG = "configuration (environment variables):\n" + settings_help()


def _write_secret_file(path: Path, text: str, *, overwrite: bool) -> bool:
    """Write ``text`` as a 0600 file, atomically; returns False if it exists and overwrite is off.

    The text goes to a temporary file in the same directory (created 0600 with ``O_EXCL``),
    is fsynced, then renamed over ``path`` (``overwrite``) or hard-linked to it (fails if
    ``path`` exists), and the directory is fsynced. A crash leaves the old file or the new one,
    never a truncated keyring; the result is 0600 whatever mode an old file had.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _grpcurl_hint(listen: str, pki: Path) -> str:
    from zumik_secrets.cli.health_check import loopback_target

    # The dev extra installs grpcurl next to this interpreter; name it so the line works as is.
    beside = Path(sys.executable).parent / "grpcurl"
    grpcurl = "grpcurl" if shutil.which("grpcurl") or not beside.exists() else str(beside)
    try:
        target = loopback_target(listen)  # a wildcard listen address is dialled on loopback
    except ValueError:
        target = listen
    return (
        f"{grpcurl} -cacert {pki}/ca.crt -cert {pki}/console.crt -key {pki}/console.key "
        f"{target} list"
    )


def _configured_listen() -> str:
    """ZUMIK_LISTEN as `serve` will read it (environment, else ZUMIK_CONFIG's file)."""
    try:
        return ServerConfig.load({**os.environ, "ZUMIK_DEV": "1"}).listen
    except (ValueError, OSError, ZumikError):
        return os.environ.get("ZUMIK_LISTEN") or DEFAULT_LISTEN


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM: one process, or a supervisor over several (--processes)."""
    from zumik_secrets.server.log_setup import configure_logging
    from zumik_secrets.server.supervisor import Supervisor, resolve_processes

    config = ServerConfig.load()
    if args.supervised_worker:
        return _serve_worker(config, args.supervised_worker)
    if args.reuse_port:
        # One process among siblings that someone else starts (the benchmarks do).
        if args.processes not in (None, 1):
            raise ValueError("--reuse-port runs one process; drop it to use --processes")
        processes = 1
    else:
        processes = resolve_processes(config, args.processes)
    configure_logging(config.log_level)
    if processes == 1:
        return _serve_one(config, reuse_port=args.reuse_port)
    supervisor = Supervisor(
        config, processes, [sys.executable, "-m", "zumik_secrets.cli.main", "serve"]
    )
    _dev_banner(config, supervisor.listen)
    return supervisor.run()


def _serve_one(config: ServerConfig, *, reuse_port: bool) -> int:
    from zumik_secrets.server.grpc_server import serve
    from zumik_secrets.server.runtime import Runtime
    from zumik_secrets.server.telemetry import configure_access_log, configure_tracing

    configure_access_log(config.access_log_level)
    configure_tracing()
    runtime = Runtime.open(config)
    _dev_banner(config, config.listen)
    serve(runtime, reuse_port=reuse_port)
    return 0


def _serve_worker(config: ServerConfig, spec: str) -> int:
    """One worker of a supervisor: shares the port, reports its health, skips migrations
    (the supervisor applied them) and dies with the supervisor."""
    from zumik_secrets.server.grpc_server import serve
    from zumik_secrets.server.log_setup import configure_logging
    from zumik_secrets.server.runtime import Runtime
    from zumik_secrets.server.supervisor import WorkerLink
    from zumik_secrets.server.telemetry import configure_access_log, configure_tracing

    link = WorkerLink(spec)
    link.die_with_parent()
    configure_logging(config.log_level, {"worker": link.index, "pid": os.getpid()})
    configure_access_log(config.access_log_level)
    configure_tracing()
    runtime = Runtime.open(config, migrate=False)
    serve(runtime, reuse_port=True, on_health=link.report)
    return 0


def _dev_banner(config: ServerConfig, listen: str) -> None:
    if config.dev:
        print(
            f"Zumik Secrets (dev) on {listen}. Try:\n  {_grpcurl_hint(listen, DEV_DIR / 'pki')}",
            file=sys.stderr,
            flush=True,
        )


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations to the configured database, or show them (--status, --dry-run).

    ``--status`` lists every migration (applied with its time, or pending) and exits 0 when
    nothing is pending, 3 when some are (scripts can gate on it). ``--dry-run`` prints the SQL
    that ``migrate`` would run, changing nothing.
    """
    from zumik_secrets.storage.factory import open_store, redact_url

    url = args.database_url or os.environ.get("ZUMIK_DATABASE_URL") or DEFAULT_DATABASE_URL
    store = open_store(url)
    try:
        if args.status or args.dry_run:
            infos = store.migration_status()
        else:
            applied = store.migrate()
            print(f"{redact_url(url)}: applied {applied or 'nothing (up to date)'}")
            return 0
    finally:
        store.close()
    pending = [m for m in infos if m.applied_at is None]
    if args.dry_run:
        if not pending:
            print(f"-- {redact_url(url)}: up to date, nothing would run")
        for m in pending:
            print(f"-- {m.version:04d}_{m.name} ({m.phase})\n{m.sql.rstrip()}\n")
        return 0
    print(f"{redact_url(url)}:")
    for m in infos:
        when = m.applied_at.isoformat(timespec="seconds") if m.applied_at else "pending"
        print(f"  {m.version:04d} {m.name:<28} {m.phase:<8} {when}")
    contract = [m for m in pending if m.phase == "contract"]
    note = f" ({len(contract)} contract: no previous-release pod may run)" if contract else ""
    print(f"{len(pending)} pending{note}")
    return 3 if pending else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new master keyring, or add a version to an existing one."""
    path = Path(args.out)
    if args.drop_version is not None:
        return _drop_version(path, args.drop_version, args.database_url)
    if args.retire is not None:
        ring = MasterKeyring.from_text(path.read_text(encoding="utf-8"))
        _write_secret_file(path, ring.retire(args.retire), overwrite=True)
        print(f"{path}: version {args.retire} retired (it only unwraps now)")
        return 0
    if args.add_version:
        ring = MasterKeyring.from_text(path.read_text(encoding="utf-8"))
        _write_secret_file(path, ring.add_version(), overwrite=True)
        print(f"{path}: added version {MasterKeyring.from_text(path.read_text()).primary}")
        return 0
    if not _write_secret_file(path, generate_keyring(), overwrite=args.force):
        print(f"{path} exists; use --force to replace it (old data becomes unreadable)")
        return 1
    print(f"wrote master keyring {path} (mode 0600)")
    return 0


def _drop_version(path: Path, version: int, database_url: str | None) -> int:
    """Remove a retired version from the keyring file, refusing while the database still holds
    anything wrapped under it."""
    from zumik_secrets.app.master_rewrap import usage_of_version
    from zumik_secrets.storage.factory import open_store, redact_url

    ring = MasterKeyring.from_text(path.read_text(encoding="utf-8"))
    text = ring.drop(version)  # refuses unless retired (so never the primary) before any I/O
    url = database_url or os.environ.get("ZUMIK_DATABASE_URL") or DEFAULT_DATABASE_URL
    store = open_store(url)
    try:
        usage = usage_of_version(store, version)
    finally:
        store.close()
    if usage.total:
        print(
            f"{redact_url(url)}: version {version} still wraps {usage.data_keys} data keys, "
            f"{usage.signing_keys} signing keys and {usage.customer_key_tokens} customer-key "
            "tokens; run rewrap-data-keys (and have those tenants reconfigure their customer "
            "key) first. The keyring is unchanged.",
            file=sys.stderr,
        )
        return 1
    _write_secret_file(path, text, overwrite=True)
    print(
        f"{path}: version {version} dropped ({redact_url(url)} holds nothing wrapped under it); "
        "backups taken before its rewrap need the old keyring to be read"
    )
    return 0


def cmd_rewrap_data_keys(args: argparse.Namespace) -> int:
    """Rewrap every keyring-wrapped data key and signing key under the keyring's primary."""
    from zumik_secrets.app.master_rewrap import rewrap_under_primary
    from zumik_secrets.storage.factory import open_store, redact_url

    url = args.database_url or os.environ.get("ZUMIK_DATABASE_URL") or DEFAULT_DATABASE_URL
    keyring_file = args.keyring or os.environ.get("ZUMIK_MASTER_KEYRING_FILE", "")
    if not keyring_file:
        raise ValueError("give --keyring or set ZUMIK_MASTER_KEYRING_FILE")
    ring = MasterKeyring.from_text(Path(keyring_file).read_text(encoding="utf-8"))
    store = open_store(url)
    try:
        store.migrate()
        report = rewrap_under_primary(store, ring)
    finally:
        store.close()
    print(
        f"{redact_url(url)}: keyring primary {ring.primary}: rewrapped "
        f"{report.data_keys_rewrapped} data keys and {report.signing_keys_rewrapped} signing "
        f"keys; {report.already_current} already current, {report.customer_wrapped} wrapped by "
        f"customer keys (untouched), {report.raced} changed meanwhile"
        + (" (run again)" if report.raced else "")
    )
    return 1 if report.raced else 0


def cmd_health(args: argparse.Namespace) -> int:
    """Check the local server's health over mTLS (the Kubernetes exec probe); 0 iff healthy."""
    from zumik_secrets.cli.health_check import check_from_env, run_health_check
    from zumik_secrets.server.tls import TlsConfigError

    check = check_from_env(
        target=args.target,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        server_name=args.server_name,
        service=args.service,
        timeout=args.timeout,
        live=args.live,
    )
    try:
        ok, status = run_health_check(check)
    except TlsConfigError as exc:
        print(f"zumik-secrets health: {exc}", file=sys.stderr)
        return 2
    print(f"{check.target}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_dev_pki(args: argparse.Namespace) -> int:
    """Write the development CA and certificates."""
    pki = generate_dev_pki(Path(args.out), trust_domain=args.trust_domain, overwrite=args.force)
    print(
        f"dev PKI in {pki.directory}: ca.crt, server.crt/.key, roles {', '.join(DEFAULT_ROLES)},"
        f" operators {', '.join(pki.operators)}"
    )
    return 0


def cmd_dev_setup(args: argparse.Namespace) -> int:
    """Prepare var/dev (PKI, keyring) and migrate the embedded store; idempotent."""
    pki_dir = DEV_DIR / "pki"
    generate_dev_pki(pki_dir)
    keyring = DEV_DIR / "keyring.json"
    if _write_secret_file(keyring, generate_keyring(), overwrite=False):
        print(f"wrote dev master keyring {keyring}")
    args.database_url = None
    args.status = args.dry_run = False
    cmd_migrate(args)
    hint = _grpcurl_hint(_configured_listen(), pki_dir)
    print(f"dev PKI in {pki_dir}; start with `make run`, then:\n  {hint}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render the README's command list)."""
    parser = argparse.ArgumentParser(
        prog="zumik-secrets",
        description="Zumik Secrets: API keys, sealed secrets, fingerprints and audit over gRPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve",
        help="run the gRPC server (mTLS only)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="server processes sharing the port under one supervisor that restarts them and "
        "answers ZUMIK_HEALTH_LISTEN for all (default: ZUMIK_PROCESSES; 0 or unset: one per "
        "usable core on PostgreSQL, one on SQLite)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="run one process that shares the port with sibling processes you start yourself "
        "(SO_REUSEPORT, no supervisor)",
    )
    p.add_argument("--supervised-worker", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--database-url", help="default: ZUMIK_DATABASE_URL or the embedded SQLite")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--status",
        action="store_true",
        help="list applied and pending migrations; exit 3 if any are pending (changes nothing)",
    )
    mode.add_argument(
        "--dry-run", action="store_true", help="print the SQL migrate would run (changes nothing)"
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("keygen", help="write a master keyring (versioned 256-bit keys)")
    p.add_argument("--out", required=True, help="keyring file to write (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument(
        "--add-version",
        action="store_true",
        help="add a new primary version to an existing keyring",
    )
    p.add_argument(
        "--retire",
        type=int,
        metavar="VERSION",
        help="retire a non-primary version (after rewrap-data-keys): it only unwraps",
    )
    p.add_argument(
        "--drop-version",
        type=int,
        metavar="VERSION",
        help="remove a retired version; refuses while the database holds anything wrapped under it",
    )
    p.add_argument(
        "--database-url",
        help="database checked by --drop-version (default: ZUMIK_DATABASE_URL or the embedded "
        "SQLite)",
    )
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "rewrap-data-keys",
        help="rewrap data keys and signing keys under the keyring's primary version",
    )
    p.add_argument("--database-url", help="default: ZUMIK_DATABASE_URL or the embedded SQLite")
    p.add_argument("--keyring", help="keyring file (default: ZUMIK_MASTER_KEYRING_FILE)")
    p.set_defaults(func=cmd_rewrap_data_keys)

    p = sub.add_parser(
        "health",
        help="check the local server over mTLS; exit 0 iff SERVING (Kubernetes exec probe)",
    )
    p.add_argument("--target", help="host:port (default: ZUMIK_LISTEN, wildcard -> 127.0.0.1)")
    p.add_argument("--cert", help="client certificate (default: ZUMIK_TLS_CERT)")
    p.add_argument("--key", help="client key (default: ZUMIK_TLS_KEY)")
    p.add_argument("--ca", help="CA of the server certificate (default: ZUMIK_TLS_CLIENT_CA)")
    p.add_argument(
        "--server-name", default="localhost", help="DNS SAN to verify in the server certificate"
    )
    p.add_argument("--service", default="", help="health service name (default: whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for the check")
    p.add_argument(
        "--live",
        action="store_true",
        help="liveness: succeed on any answer, NOT_SERVING included (not only SERVING)",
    )
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("dev-pki", help="write a development CA and mTLS certificates")
    p.add_argument("--out", default=str(DEV_DIR / "pki"))
    p.add_argument("--trust-domain", default="zumik.local")
    p.add_argument("--force", action="store_true", help="replace an existing PKI")
    p.set_defaults(func=cmd_dev_pki)

    p = sub.add_parser("dev-setup", help="make var/dev (PKI, keyring) and migrate SQLite")
    p.set_defaults(func=cmd_dev_setup)

    audit_verify.add_parser(sub)
    lifecycle.add_parsers(sub)
    signing_keys.add_parsers(sub)
    verify_release.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ValueError, RuntimeError, OSError, ZumikError) as exc:
        print(f"zumik-secrets {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
