"""Read-model commands: `register(subparsers)` adds them to any argparse CLI (the `ledger` CLI wires
them in); `python -m projections ...` runs them standalone.

    project [--source engine|kafka] [--once]      run the projector (engine change feed or Kafka)
    statement ACCOUNT --from T --to T [--limit N]  an account's entries with opening/closing balances
    balance ACCOUNT [--at T]                       balances as of a time (default: now)
    totals --from T --to T                         per day x currency x type x source x change
    correlation ID                                 transactions sharing a correlation id
    reconcile                                      ClickHouse against engine balances; exit 1 on drift
    audit export --from T --to T --format csv|parquet --out DIR
    audit verify [--export DIR]                    the live chain, or an export (and its live head)
    audit verify --export DIR --public-key FILE    an export bundle offline: no read model, nothing written
    audit keys [--rotate]                          checkpoint signing keys (public halves)
    audit checkpoint                               seal a signed checkpoint now
    audit prove (--sequence N | --transaction ID | --event ID) [--tree-size N]
    audit consistency --old N [--new N]            proofs, as documents the stand-alone verifier checks

The query commands (statement, balance, totals, correlation, reconcile, audit export, audit verify) ask
the running service by default - the JSON gateway, and the SQL endpoint for audit export/verify - so they
work while `ledger serve` runs (projections/_service_client.py). Credentials: LEDGER_CLIENT__TOKEN or
LEDGER_CLIENT__API_KEY; neither, in auth.mode=dev: a development token minted for the command. Addresses:
LEDGER_API__HOST/HTTP_PORT/SQL_PORT (as the service) or LEDGER_CLIENT__GATEWAY_URL/SQL_URL. With
--offline they open the files (chDB folder, engine journal) instead, which only works while the service
is stopped: while it runs, --offline is one line and exit 2. Over the service the output is the service's
JSON (proto3 JSON of the ledger.v1.History messages: u64/u128 as decimal strings); an audit export over
the service attaches evidence.json from the service's signed checkpoint and proofs when given the
verifier key file to check it with (--public-key FILE).

Times: RFC 3339 with an offset (2026-01-31T12:00:00Z, up to nanoseconds), a date (2026-01-31,
midnight UTC), `now`, or an engine timestamp in ns. Bad input (a time, an account, a non-empty --out)
is one line on stderr and exit code 2 (a service that cannot be reached or fails: exit 1). Output: one
JSON object per line (u128 values as decimal strings, as on the wire).
Settings: LEDGER_CLICKHOUSE__*, LEDGER_ENGINE__*, LEDGER_KAFKA__*, LEDGER_CLIENT__* (facade/settings.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from facade.settings import Settings
from projections._cli_input import (
    ACCOUNT_HELP,
    EXIT_USAGE,
    TIME_HELP,
    CliInputError,
    OneLineArgumentParser,
    check_range,
    empty_output_directory,
    known_account,
    parse_account,
)
from projections._cli_input import parse_time as _parse_time
from projections._service_client import ServiceError
from projections.audit_commands import register_evidence_commands
from projections.audit_evidence import EvidenceError
from projections.client import ClickHouseClient
from projections.projector import Projector
from projections.queries import STATEMENT_LINES_MAX

EXIT_SERVICE = 1
"""The service could not be reached or failed (not the caller's input: that is EXIT_USAGE)."""
_SAFE_INTEGER_MAX = (1 << 53) - 1
"""Integers above this are printed as decimal strings: exact in every JSON reader."""


def parse_time(text: str, option: str = "time") -> int:
    """An engine timestamp (ns since the Unix epoch): see projections/_cli_input.py."""
    return _parse_time(text, option)


def _time_range(args: argparse.Namespace) -> tuple[int, int]:
    timestamp_from = parse_time(args.timestamp_from, "--from")
    timestamp_to = parse_time(args.timestamp_to, "--to")
    check_range(timestamp_from, timestamp_to)
    return timestamp_from, timestamp_to


def _jsonable(value: object) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _SAFE_INTEGER_MAX else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _print(value: object) -> None:
    print(json.dumps(_jsonable(value), ensure_ascii=False))


def _project(settings: Settings, args: argparse.Namespace) -> int:
    from projections.client import open_client

    client = open_client(settings.clickhouse)
    try:
        projector = Projector(client)
        if args.source == "kafka":
            return _project_kafka(settings, projector, args.once)
        return asyncio.run(_project_engine(settings, projector, args.once))
    finally:
        client.close()


async def _project_engine(settings: Settings, projector: Projector, once: bool) -> int:
    from facade.changes.into_read_model import change_capture
    from facade.engine import open_engine
    from facade.metadata import open_metadata_store

    engine = await open_engine(settings.engine)
    store = await open_metadata_store(settings.api, engine)
    try:
        capture = change_capture(engine, projector, settings.clickhouse.projector_checkpoint, store)
        if once:
            total = 0
            while published := await capture.run_once():
                total += published
            _print({"changes_projected": total, "lag_seconds": projector.lag_seconds})
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await capture.run(stop)
        return 0
    finally:
        await store.close()
        await engine.close()


def _project_kafka(settings: Settings, projector: Projector, once: bool) -> int:
    from projections.kafka_consumer import KafkaProjector

    if not settings.kafka.bootstrap_servers:
        raise SystemExit("projections project --source kafka: set LEDGER_KAFKA__BOOTSTRAP_SERVERS")
    consumer = KafkaProjector(projector, settings.kafka, settings.clickhouse)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if once:
            while consumer.run_once(timeout_seconds=1.0):
                pass
            _print({"entries_consumed": consumer.consumed, "lag_seconds": projector.lag_seconds})
        else:
            consumer.run(stop)
    finally:
        consumer.close()
    return 0


def _with_client(
    action: Callable[[ClickHouseClient, argparse.Namespace], int],
) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        from projections.client import open_client
        from projections.schema import create_tables

        client = open_client(settings.clickhouse)
        try:
            create_tables(client)
            return action(client, args)
        finally:
            client.close()

    return run


def _statement(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.queries import statement

    known_account(client, args.account_id)
    _print(statement(client, args.account_id, args.timestamps[0], args.timestamps[1], args.limit))
    return 0


def _balance(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.queries import balance_as_of

    known_account(client, args.account_id)
    _print(balance_as_of(client, args.account_id, args.timestamp_at))
    return 0


def _totals(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.queries import daily_totals

    for total in daily_totals(client, args.timestamps[0], args.timestamps[1]):
        _print(total)
    return 0


def _checked(
    handler: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[Settings, argparse.Namespace], int]:
    """Parses and checks the arguments before the handler opens anything: a refusal writes nothing."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        if hasattr(args, "account"):
            args.account_id = parse_account(args.account)
        if hasattr(args, "timestamp_from"):
            args.timestamps = _time_range(args)
        if hasattr(args, "at"):
            args.timestamp_at = parse_time(args.at, "--at")
        if getattr(args, "limit", None) is not None and not 1 <= args.limit <= STATEMENT_LINES_MAX:
            raise CliInputError(f"--limit: {args.limit} is not in 1..{STATEMENT_LINES_MAX}")
        if getattr(args, "out", None) is not None and getattr(args, "audit_command", "") == "export":
            empty_output_directory(args.out)
        export = getattr(args, "export", None)
        if export is not None and not (Path(export) / "manifest.json").is_file():
            raise CliInputError(f"--export: {export} is not an export directory (no manifest.json)")
        public_key = getattr(args, "public_key", None)
        if public_key is not None and not Path(public_key).is_file():
            raise CliInputError(f"--public-key: {public_key} is not a file")
        return handler(settings, args)

    return run


def _correlation(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.queries import transactions_by_correlation_id

    for row in transactions_by_correlation_id(client, args.correlation_id):
        _print(row)
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    del args

    async def run() -> int:
        from facade.engine import open_engine
        from projections.client import open_client
        from projections.reconcile import reconcile

        engine = await open_engine(settings.engine)
        client = open_client(settings.clickhouse)
        try:
            report = await reconcile(engine, client)
        finally:
            client.close()
            await engine.close()
        _print(dataclasses.asdict(report) | {"ok": report.ok})
        return 0 if report.ok else 1

    return asyncio.run(run())


def _audit_export(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.audit import amount_scales, export

    timestamp_from, timestamp_to = args.timestamps
    scales = amount_scales(args.currencies)
    manifest = export(
        client, Path(args.out), timestamp_from=timestamp_from, timestamp_to=timestamp_to, fmt=args.format, scales=scales
    )
    _print(manifest)
    return 0


def _audit_verify(client: ClickHouseClient, args: argparse.Namespace) -> int:
    from projections.audit import verify_export, verify_live

    if args.export:
        report = verify_export(Path(args.export), None if args.files_only else client, progress=True)
        # The chain alone has no key: anyone can recompute it. Say so rather than let "ok" imply more.
        evidence = "not checked: add --public-key FILE to verify the signed checkpoint and proofs (docs/audit.md)"
        _print(dataclasses.asdict(report) | {"ok": report.ok, "evidence": evidence})
        return 0 if report.ok else 1
    report = verify_live(client, progress=True)
    _print(dataclasses.asdict(report) | {"ok": report.ok})
    return 0 if report.ok else 1


def _audit_export_bundle(settings: Settings, args: argparse.Namespace) -> int:
    """Exports, then (unless --no-evidence) attaches the signed checkpoint and proofs."""
    args.currencies = settings.api.currencies
    if args.no_evidence:
        return _with_client(_audit_export)(settings, args)

    def run(client: ClickHouseClient, args: argparse.Namespace) -> int:
        from facade.audit.log import open_audit_log
        from projections.audit import amount_scales, export
        from projections.audit_evidence import attach_evidence, catch_up

        audit = open_audit_log(settings)
        try:
            catch_up(audit, client)
            directory = Path(args.out)
            scales = amount_scales(settings.api.currencies)
            timestamp_from, timestamp_to = args.timestamps
            manifest = export(
                client,
                directory,
                timestamp_from=timestamp_from,
                timestamp_to=timestamp_to,
                fmt=args.format,
                scales=scales,
            )
            evidence = attach_evidence(directory, manifest, audit, client)
        finally:
            audit.close()
        _print(dataclasses.asdict(manifest) | {"evidence": evidence})
        return 0

    return _with_client(run)(settings, args)


def _audit_verify_entry(settings: Settings, args: argparse.Namespace) -> int:
    """With --public-key: the bundle alone (no read model opened, nothing created); else as before."""
    if args.public_key is None:
        return _with_client(_audit_verify)(settings, args)
    if not args.export:
        raise CliInputError("--public-key needs --export DIR")
    from ledger_audit_verifier import NoteError, parse_keys, verify_bundle

    try:
        key = parse_keys(Path(args.public_key).read_text())
    except (OSError, NoteError) as error:
        raise CliInputError(f"--public-key: {error}") from None
    report = verify_bundle(Path(args.export), key)
    _print(dataclasses.asdict(report) | {"ok": report.ok})
    return 0 if report.ok else 1


OFFLINE_HELP = (
    "open the read model's files (and the engine journal) directly instead of asking the running service; "
    "refused while a service holds them"
)


def _online_or_offline(
    online: Callable[[Settings, argparse.Namespace], int],
    offline: Callable[[Settings, argparse.Namespace], int],
    *,
    engine: bool = False,
) -> Callable[[Settings, argparse.Namespace], int]:
    """The running service by default; the files with --offline, and then only when no service holds them."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        if not args.offline:
            return online(settings, args)
        from projections._service_client import offline_refusal

        if (refusal := offline_refusal(settings, engine=engine)) is not None:
            raise refusal
        return offline(settings, args)

    return run


def _online_statement(settings: Settings, args: argparse.Namespace) -> int:
    from projections._service_client import open_gateway

    timestamp_from, timestamp_to = args.timestamps
    with open_gateway(settings) as gateway:
        path = f"/v1/accounts/{args.account_id}/statement"
        _print(gateway.get(path, {"from": timestamp_from, "to": timestamp_to, "limit": args.limit}))
    return 0


def _online_balance(settings: Settings, args: argparse.Namespace) -> int:
    from projections._service_client import open_gateway

    with open_gateway(settings) as gateway:
        _print(gateway.get(f"/v1/accounts/{args.account_id}/balance-as-of", {"as_of": args.timestamp_at}))
    return 0


def _online_totals(settings: Settings, args: argparse.Namespace) -> int:
    from projections._service_client import open_gateway

    timestamp_from, timestamp_to = args.timestamps
    with open_gateway(settings) as gateway:
        found = gateway.get("/v1/history/daily-totals", {"from": timestamp_from, "to": timestamp_to})
    for total in found["totals"]:
        _print(total)
    return 0


def _online_correlation(settings: Settings, args: argparse.Namespace) -> int:
    from projections._service_client import open_gateway

    with open_gateway(settings) as gateway:
        found = gateway.get("/v1/history/transactions", {"correlation_id": args.correlation_id})
    for transfer in found["transfers"]:
        _print(transfer)
    return 0


def _online_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from projections._service_client import open_gateway

    del args
    with open_gateway(settings) as gateway:
        report = gateway.get("/v1/history/reconciliation")
    _print(report)
    return 0 if report["ok"] is True else 1


def _verifier_keys(path: str) -> list[Any]:
    from ledger_audit_verifier import NoteError, parse_keys

    try:
        keys = parse_keys(Path(path).read_text())
    except (OSError, UnicodeDecodeError, NoteError) as error:
        raise CliInputError(f"--public-key: {error}") from None
    if not keys:
        raise CliInputError(f"--public-key: {path} holds no verifier key")
    return keys


def _online_audit_export(settings: Settings, args: argparse.Namespace) -> int:
    """Rows from the SQL endpoint; evidence.json from the service's checkpoint and proofs, verified with
    the caller's --public-key (projections/_remote_evidence.py)."""
    from projections._remote_evidence import attach_remote_evidence
    from projections._service_client import open_gateway, open_sql_client
    from projections.audit import amount_scales, export

    keys = _verifier_keys(args.public_key) if args.public_key is not None and not args.no_evidence else None
    client = open_sql_client(settings)
    try:
        timestamp_from, timestamp_to = args.timestamps
        scales = amount_scales(settings.api.currencies)
        manifest = export(
            client,
            Path(args.out),
            timestamp_from=timestamp_from,
            timestamp_to=timestamp_to,
            fmt=args.format,
            scales=scales,
        )
        evidence: object = None
        if keys is not None:
            with open_gateway(settings) as gateway:
                found = attach_remote_evidence(Path(args.out), manifest, client, gateway, keys)
            evidence = dataclasses.asdict(found)
        elif not args.no_evidence:
            evidence = "not attached: add --public-key FILE (ledger audit keys --verifier-keys) for evidence.json"
    finally:
        client.close()
    _print(dataclasses.asdict(manifest) | {"evidence": evidence})
    return 0


def _online_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    if args.public_key is not None:
        return _audit_verify_entry(settings, args)  # The bundle and the key alone: no read model, no service.
    if args.export and args.files_only:
        from projections.audit import verify_export

        report = verify_export(Path(args.export), None, progress=True)  # The files alone.
        _print(dataclasses.asdict(report) | {"ok": report.ok})
        return 0 if report.ok else 1
    from projections._service_client import open_sql_client

    client = open_sql_client(settings)
    try:
        return _audit_verify(client, args)
    finally:
        client.close()


def register(subparsers: Any) -> None:
    """Adds the read-model commands to an argparse subparsers object (`parser.add_subparsers()`).
    Each parser sets `projections_run(settings, args) -> exit code`; call `run(args)` to dispatch."""
    project = subparsers.add_parser("project", help="run the ClickHouse projector")
    project.add_argument(
        "--source", choices=("engine", "kafka"), default="engine", help="where changes come from (default: engine)"
    )
    project.add_argument("--once", action="store_true", help="catch up, then exit")
    project.set_defaults(projections_run=_project)

    statement = subparsers.add_parser("statement", help="an account's statement for a period")
    statement.add_argument("account", help=ACCOUNT_HELP)
    statement.add_argument(
        "--from", dest="timestamp_from", required=True, metavar="TIME", help=f"period start, inclusive: {TIME_HELP}"
    )
    statement.add_argument(
        "--to", dest="timestamp_to", required=True, metavar="TIME", help=f"period end, exclusive: {TIME_HELP}"
    )
    statement.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help=f"most lines to print, 1..{STATEMENT_LINES_MAX} (default: 1000)",
    )
    statement.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    statement.set_defaults(projections_run=_checked(_online_or_offline(_online_statement, _with_client(_statement))))

    balance = subparsers.add_parser("balance", help="an account's balances as of a time")
    balance.add_argument("account", help=ACCOUNT_HELP)
    balance.add_argument("--at", default="now", metavar="TIME", help=f"the moment (default: now): {TIME_HELP}")
    balance.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    balance.set_defaults(projections_run=_checked(_online_or_offline(_online_balance, _with_client(_balance))))

    totals = subparsers.add_parser("totals", help="daily totals for reconciliation")
    totals.add_argument(
        "--from", dest="timestamp_from", required=True, metavar="TIME", help=f"period start, inclusive: {TIME_HELP}"
    )
    totals.add_argument(
        "--to", dest="timestamp_to", required=True, metavar="TIME", help=f"period end, exclusive: {TIME_HELP}"
    )
    totals.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    totals.set_defaults(projections_run=_checked(_online_or_offline(_online_totals, _with_client(_totals))))

    correlation = subparsers.add_parser("correlation", help="transactions by correlation id")
    correlation.add_argument("correlation_id", help="the correlation id, as given to the API (text)")
    correlation.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    correlation.set_defaults(
        projections_run=_checked(_online_or_offline(_online_correlation, _with_client(_correlation)))
    )

    reconcile = subparsers.add_parser("reconcile", help="compare ClickHouse with engine balances")
    reconcile.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    reconcile.set_defaults(projections_run=_checked(_online_or_offline(_online_reconcile, _reconcile, engine=True)))

    audit = subparsers.add_parser("audit", help="audit exports and chain verification")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    export = audit_commands.add_parser("export", help="export chain rows of a time range with a manifest")
    export.add_argument(
        "--from", dest="timestamp_from", required=True, metavar="TIME", help=f"range start, inclusive: {TIME_HELP}"
    )
    export.add_argument(
        "--to", dest="timestamp_to", required=True, metavar="TIME", help=f"range end, exclusive: {TIME_HELP}"
    )
    export.add_argument(
        "--format", choices=("csv", "parquet"), default="csv", help="file format (default: csv; docs/exports.md)"
    )
    export.add_argument("--out", required=True, metavar="DIR", help="directory to write: new, or existing and empty")
    export.add_argument("--no-evidence", action="store_true", help="no signed checkpoint and proofs (evidence.json)")
    export.add_argument(
        "--public-key",
        metavar="FILE",
        help="over the service: the verifier key file (one key per line) the evidence is checked with; "
        "without it no evidence.json is attached (--offline signs with the local audit log's keys)",
    )
    export.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    export.set_defaults(projections_run=_checked(_online_or_offline(_online_audit_export, _audit_export_bundle)))
    verify = audit_commands.add_parser("verify", help="verify the live chain, or an export")
    verify.add_argument("--export", metavar="DIR", help="an export directory (default: verify the live read model)")
    verify.add_argument("--files-only", action="store_true", help="with --export: do not compare with the live head")
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="with --export: verify the bundle offline with this verifier key file (one key per line)",
    )
    verify.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    verify.set_defaults(projections_run=_checked(_online_or_offline(_online_audit_verify, _audit_verify_entry)))
    register_evidence_commands(audit_commands)

    from projections.statements.cli import register as register_statement_commands

    register_statement_commands(subparsers)


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Dispatches a parsed read-model command; returns its exit code."""
    handler: Callable[[Settings, argparse.Namespace], int] = args.projections_run
    try:
        return handler(settings or Settings(), args)
    except CliInputError as error:
        print(f"ledger {_command_name(args)}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as error:
        print(f"ledger {_command_name(args)}: {error.message}", file=sys.stderr)
        return EXIT_USAGE if error.usage else EXIT_SERVICE
    except EvidenceError as error:  # The rows are written; the evidence could not be (yet).
        print(f"ledger {_command_name(args)}: {error}", file=sys.stderr)
        return EXIT_SERVICE


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(str(part) for part in (getattr(args, "command", ""), getattr(args, "audit_command", ""))).strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="python -m projections", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    register(parser.add_subparsers(dest="command", required=True))
    sys.exit(run(parser.parse_args(argv)))
