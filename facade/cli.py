"""`ledger`: the service's command line.

ledger serve [--workers N]           run the service (settings from LEDGER_* variables / .env); N processes on
                                     one port with the TigerBeetle backend and the PostgreSQL metadata store
ledger dev-token [--client-id ID]    print a development JWT with every scope (dev auth mode)
ledger dev-certs --out DIR [--host NAME ...]
                                     write a development CA + server/client certificates (TLS, mTLS)
ledger replay --from beginning|<ns> --to-topic TOPIC
                                     re-emit confirmed entries from the engine's history to Kafka
ledger kafka init                    create the service's topics (LEDGER_KAFKA__* settings) and verify them
ledger kafka schema [--out FILE]     the ledger.v1 descriptor set (protoc --decode, schema registries)
ledger doctor [--data-dir D] [--mirror-dir M] [--repair]
                                     verify (and repair) the embedded engine's journal offline;
                                     exit 0 healthy/repaired, 1 damage found or unrepairable
ledger backup --to DIR [--data-dir D] copy the verified, acknowledged journal (works while serving)
ledger restore --from DIR [--data-dir D] [--mirror-dir M]
                                     copy a verified backup into an empty data directory

The ClickHouse read model (projections/cli.py has the details; these ask the running service, --offline
opens the files while it is stopped):
ledger project [--source engine|kafka] [--once]
ledger statement ACCOUNT --from T --to T | balance ACCOUNT [--at T] | totals --from T --to T
ledger correlation ID | reconcile
ledger audit export --from T --to T --format csv|parquet --out DIR
ledger audit verify [--export DIR [--public-key FILE]]
ledger audit keys [--rotate] | checkpoint | prove --sequence N | consistency --old N   (docs/audit.md)
ledger statement-reconcile ACCOUNT --file F --format csv|camt053 [--mapping K=V] [--out CSV]
                                     match a bank/PSP statement (docs/statement-reconciliation.md)
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from facade.settings import Settings


def _replay(settings: Settings, timestamp_from: str, topic: str) -> None:
    from facade.changes.replay import replay
    from facade.engine import open_engine
    from facade.kafka.entries_publisher import KafkaEntryPublisher
    from facade.metadata import open_metadata_store

    if not settings.kafka.bootstrap_servers:
        raise SystemExit("ledger replay: set LEDGER_KAFKA__BOOTSTRAP_SERVERS")
    start = 0 if timestamp_from == "beginning" else int(timestamp_from)

    async def run() -> int:
        engine = await open_engine(settings.engine)
        store = await open_metadata_store(settings.api, engine)
        publisher = KafkaEntryPublisher(settings.kafka, topic)
        try:
            return await replay(engine, publisher, start, metadata=store)
        finally:
            publisher.close()
            await store.close()
            await engine.close()

    print(f"replayed {asyncio.run(run())} changes to {topic}")


def _kafka_schema(out: str) -> None:
    import sys

    from facade.kafka.descriptors import descriptor_set

    if out == "-":
        if sys.stdout.isatty():
            raise SystemExit("ledger kafka schema: binary output; redirect it or pass --out FILE")
        sys.stdout.buffer.write(descriptor_set())
        return
    with open(out, "wb") as file:
        file.write(descriptor_set())


def _kafka_init(settings: Settings) -> None:
    from facade.kafka.topics import TopicError, ensure_topics, topic_specs

    if not settings.kafka.bootstrap_servers:
        raise SystemExit("ledger kafka init: set LEDGER_KAFKA__BOOTSTRAP_SERVERS (e.g. the address printed by "
                         "scripts/kafka_broker.py start)")  # fmt: skip
    try:
        created = set(ensure_topics(settings.kafka))
    except TopicError as error:
        raise SystemExit(f"ledger kafka init: {error}") from None
    for spec in topic_specs(settings.kafka):
        state = "created" if spec.name in created else "verified"
        print(f"{state:8} {spec.name} ({spec.role.value}): {spec.partitions} partitions, "
              f"replication {spec.replication_factor}, {dict(spec.config)}")  # fmt: skip


def _journal_command(args: argparse.Namespace, settings: Settings) -> int:
    """doctor / backup / restore on the embedded engine's journal (facade/engine/journal_check.py)."""
    from pathlib import Path

    from facade.engine.journal import JournalCorruptError, JournalLockedError
    from facade.engine.journal_check import backup, doctor, restore

    data_dir = Path(args.data_dir) if args.data_dir else settings.engine.data_dir
    mirror_value = getattr(args, "mirror_dir", None) or settings.engine.mirror_dir
    mirror = Path(mirror_value) if mirror_value else None
    try:
        if args.command == "doctor":
            code, report = doctor(data_dir, mirror, repair=args.repair)
            print(report)
            return code
        if args.command == "backup":
            result = backup(data_dir, Path(args.to), mirror)
            print(f"backed up {len(result.records)} records ({result.size} bytes) to {args.to}")
            return 0
        result = restore(Path(args.source), data_dir, mirror)
        print(f"restored {len(result.records)} records ({result.size} bytes) into {data_dir}")
        return 0
    except (JournalCorruptError, JournalLockedError, FileExistsError) as error:
        print(f"ledger {args.command}: {error}")
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    from projections._cli_input import OneLineArgumentParser  # Usage errors: one line, exit code 2.

    parser = OneLineArgumentParser(
        prog="ledger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="run the service")
    serve_command.add_argument(
        "--workers", type=int, default=1, help="server processes on one port (SO_REUSEPORT; TigerBeetle backend only)"
    )
    serve_command.add_argument("--worker-of", default="", help=argparse.SUPPRESS)  # Names a worker in `ps`.
    token = commands.add_parser("dev-token", help="print a development JWT")
    token.add_argument("--client-id", default="dev-client")
    token.add_argument("--scopes", default="ledger.read ledger.write ledger.admin ledger.audit")
    token.add_argument("--ttl-seconds", type=int, default=24 * 3600)
    certs = commands.add_parser("dev-certs", help="write a development CA and server/client certificates")
    certs.add_argument("--out", required=True, help="output directory")
    certs.add_argument(
        "--host", action="append", default=[], help="a DNS name or IP the server certificate is valid for (repeat)"
    )
    certs.add_argument("--days", type=int, default=365)
    certs.add_argument("--force", action="store_true", help="replace existing files")
    replay = commands.add_parser("replay", help="re-emit confirmed entries to a Kafka topic")
    replay.add_argument(
        "--from", dest="timestamp_from", default="beginning", help="'beginning' or an engine timestamp (ns)"
    )
    replay.add_argument("--to-topic", required=True)
    kafka = commands.add_parser("kafka", help="Kafka administration").add_subparsers(
        dest="kafka_command", required=True
    )
    schema = kafka.add_parser(
        "schema",
        help="write the FileDescriptorSet of every ledger.v1 message (for protoc --decode --descriptor_set_in, "
        "schema registries, Kafka Connect) to --out or standard output",
    )
    schema.add_argument("--out", default="-", help="file to write (default: standard output, binary)")
    kafka.add_parser(
        "init",
        help="create the missing topics (entries, commands, results, DLQ, checkpoints) with the partitions, "
        "replication and min.insync.replicas from LEDGER_KAFKA__* settings, and verify the existing ones",
    )
    doctor = commands.add_parser("doctor", help="verify (and repair) the embedded engine's journal")
    backup = commands.add_parser("backup", help="copy the verified, acknowledged journal to a directory")
    restore = commands.add_parser("restore", help="copy a verified backup into an empty data directory")
    for journal_command in (doctor, backup, restore):
        journal_command.add_argument("--data-dir", default=None, help="default: LEDGER_ENGINE__DATA_DIR")
    for journal_command in (doctor, backup, restore):
        journal_command.add_argument("--mirror-dir", default=None, help="default: LEDGER_ENGINE__MIRROR_DIR")
    doctor.add_argument("--repair", action="store_true", help="restore damage from intact copies")
    backup.add_argument("--to", required=True)
    restore.add_argument("--from", dest="source", required=True)
    from projections import cli as read_model

    read_model.register(commands)
    args = parser.parse_args(argv)
    settings = Settings()
    if hasattr(args, "projections_run"):
        raise SystemExit(read_model.run(args, settings))
    if args.command in ("doctor", "backup", "restore"):
        raise SystemExit(_journal_command(args, settings))
    if args.command == "serve":
        from facade.workers import serve_workers, workers_refusal

        if refusal := workers_refusal(settings, args.workers):
            raise SystemExit(f"ledger serve: {refusal}")
        if args.workers > 1:
            raise SystemExit(serve_workers(settings, args.workers))
        import uvloop

        from facade.settings import settings_served

        settings = settings_served(settings, cpu_count=os.cpu_count())

        from facade._token import JwksError
        from facade.app import serve
        from facade.auth import InsecureStartError
        from facade.engine.journal import JournalCorruptError

        # api.event_loop: asyncio's, or uvloop's (facade.front_process says why it is cheaper per call).
        loop_factory = uvloop.new_event_loop if settings.api.event_loop == "uvloop" else None
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(serve(settings))
        except (InsecureStartError, JwksError, JournalCorruptError) as error:  # A refusal, not a crash: say why.
            raise SystemExit(f"ledger serve: {error}") from None
    elif args.command == "dev-token":
        from facade.auth import issue_token

        if settings.auth.mode != "dev" and not settings.auth.jwt_secret.get_secret_value():
            raise SystemExit("ledger dev-token: no signing secret (auth.mode=enforce without jwt_secret)")
        print(issue_token(settings.auth, args.client_id, frozenset(args.scopes.split()), args.ttl_seconds))
    elif args.command == "kafka" and args.kafka_command == "schema":
        _kafka_schema(args.out)
    elif args.command == "kafka":
        _kafka_init(settings)
    elif args.command == "dev-certs":
        from pathlib import Path

        from facade.dev_certs import HOSTS_DEFAULT, VALIDITY_DAYS_MAX, write_dev_certs

        if not 1 <= args.days <= VALIDITY_DAYS_MAX:
            raise SystemExit(f"ledger dev-certs: --days must be 1..{VALIDITY_DAYS_MAX}")
        try:
            written = write_dev_certs(
                Path(args.out), hosts=[*HOSTS_DEFAULT, *args.host], days=args.days, force=args.force
            )
        except FileExistsError as error:
            raise SystemExit(f"ledger dev-certs: {error}") from None
        print(f"wrote ca.crt, server.crt/.key, client.crt/.key (and ca.key) to {written.directory}")
    else:
        _replay(settings, args.timestamp_from, args.to_topic)


if __name__ == "__main__":
    main()
