#!/usr/bin/env python3
"""A real Apache Kafka (KRaft) on 127.0.0.1 for tests and local runs: no Docker, no mocks.

    python scripts/kafka_broker.py fetch                       # broker jars from Maven Central (cached)
    python scripts/kafka_broker.py start [--data-dir data/kafka] [--brokers 3] [--port 9092]
    python scripts/kafka_broker.py stop [--data-dir data/kafka]
    python scripts/kafka_broker.py address [--data-dir data/kafka]   # bootstrap of a running cluster
    python scripts/kafka_broker.py stop-broker --data-dir DIR --node 2    # fault tests (3 brokers)
    python scripts/kafka_broker.py start-broker --data-dir DIR --node 2

`fetch` resolves Kafka's broker and its runtime dependencies with Maven into a cache directory
(`LEDGER_KAFKA_CACHE`, default ~/.cache/ledger-service/kafka-<version>): a second run does no network
work. Each node is a combined broker+controller; three nodes form a three-voter controller quorum with
replication factor 3 and min.insync.replicas 2. Every wait is bounded; a broker that does not come up
fails with the tail of its log, and a start that fails stops every node it launched (no JVM is left
behind). `start` prints the bootstrap address (for LEDGER_KAFKA__BOOTSTRAP_SERVERS) on stdout.

Any Python runs it: without `confluent_kafka` (the system Python) it re-executes itself with the
project's virtualenv (`.venv`, made by scripts/bootstrap.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger_testkit.ports import free_port

KAFKA_VERSION = "4.1.0"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
HEAP = "-Xmx384m"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
PROBE_INTERVAL_SECONDS = 0.2
LOG_TAIL_LINES = 40
STATE_FILE = "cluster.json"
DATA_DIR_DEFAULT = Path("data/kafka")
VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>ledger-service</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{SLF4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "ledger-service" / f"kafka-{KAFKA_VERSION}"
    return Path(os.environ.get("LEDGER_KAFKA_CACHE", default))


def fetch() -> Path:
    """The directory of broker jars, resolved with Maven on first use."""
    libs = cache_dir() / "libs"
    marker = cache_dir() / "complete"
    if marker.exists():
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "pom.xml").write_text(POM)
        subprocess.run(
            [
                "mvn", "-q", "-B", "-f", str(Path(work) / "pom.xml"), "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
            ],
            check=True,
        )  # fmt: skip
    assert any(libs.glob(f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar")), "Maven did not fetch the broker"
    (cache_dir() / "log4j2.xml").write_text(LOG4J2)
    marker.write_text(KAFKA_VERSION)
    return libs


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    pid: int = 0


@dataclass
class KafkaCluster:
    """One to three KRaft nodes on 127.0.0.1, each a broker and a controller."""

    data_dir: Path
    brokers: int = 1
    nodes: list[Node] = field(default_factory=list)
    cluster_id: str = ""

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    # Lifecycle.

    def start(self, port: int | None = None) -> None:
        assert self.brokers in (1, 3), "1 broker, or 3 for fault tests"
        libs = fetch()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = self.cluster_id or _kraft_cluster_id()
        self.nodes = [Node(i + 1, port + i if port else free_port(), free_port()) for i in range(self.brokers)]
        for node in self.nodes:
            properties = self._write_properties(node)
            subprocess.run(
                _java(libs, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                      "--cluster-id", self.cluster_id, "--config", str(properties)),
                check=True, capture_output=True,
            )  # fmt: skip
        try:
            for node in self.nodes:
                self._launch(node, libs)
            self._save()
            self.wait_ready()
        except BaseException:
            self.stop()  # A failed start leaves nothing running.
            raise

    def stop(self) -> None:
        # Signal every node first: stopped one at a time, each would wait on a shrinking quorum.
        running = [n for n in self.nodes if n.pid and _alive(n.pid)]
        for node in running:
            os.kill(node.pid, signal.SIGTERM)
        for node in running:
            self._terminate(node)
        self._save()

    def stop_broker(self, node_id: int) -> None:
        self._terminate(self._node(node_id))
        self._save()

    def start_broker(self, node_id: int) -> None:
        self._launch(self._node(node_id), fetch())
        self._save()
        self.wait_ready()

    def wait_ready(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Until every running node answers metadata requests (and sees all running brokers)."""
        from confluent_kafka.admin import AdminClient

        running = [n for n in self.nodes if n.pid and _alive(n.pid)]
        deadline = time.monotonic() + timeout_seconds
        admin: AdminClient | None = None
        while True:
            for node in running:
                if not _alive(node.pid):
                    raise RuntimeError(f"kafka node {node.node_id} exited:\n{self.log_tail(node)}")
            # TCP first: librdkafka logs every refused connection, so only ask it once ports accept.
            if all(_accepts(node.port) for node in running):
                admin = admin or AdminClient({"bootstrap.servers": self.bootstrap_servers})
                try:
                    if len(admin.list_topics(timeout=2).brokers) >= len(running):
                        return
                except Exception:  # Not serving yet: retried until the deadline.
                    pass
            if time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(n) for n in running)
                raise TimeoutError(f"kafka not ready after {timeout_seconds}s:\n{tails}")
            time.sleep(PROBE_INTERVAL_SECONDS)

    def log_tail(self, node: Node) -> str:
        path = self._node_dir(node) / "broker.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return f"--- node {node.node_id} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    # Internals.

    def _node(self, node_id: int) -> Node:
        [node] = [n for n in self.nodes if n.node_id == node_id]
        return node

    def _node_dir(self, node: Node) -> Path:
        return self.data_dir / f"node-{node.node_id}"

    def _write_properties(self, node: Node) -> Path:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replication = 3 if self.brokers == 3 else 1
        min_isr = 2 if self.brokers == 3 else 1
        directory = self._node_dir(node)
        directory.mkdir(parents=True, exist_ok=True)
        properties = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(directory / "log"),
            "num.partitions": 3,
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": 6,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "log.flush.interval.messages": 9223372036854775807,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "log.segment.bytes": 64 * 1024 * 1024,
        }
        path = directory / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        return path

    def _launch(self, node: Node, libs: Path) -> None:
        assert not (node.pid and _alive(node.pid)), f"node {node.node_id} is already running"
        log = open(self._node_dir(node) / "broker.log", "ab")  # noqa: SIM115 - handed to the child.
        process = subprocess.Popen(
            _java(libs, "kafka.Kafka", str(self._node_dir(node) / "server.properties")),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Not killed with the shell that started it; stopped by pid.
        )
        log.close()
        node.pid = process.pid

    def _terminate(self, node: Node) -> None:
        if not node.pid or not _alive(node.pid):
            node.pid = 0
            return
        os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _alive(node.pid) and time.monotonic() < deadline:
            time.sleep(PROBE_INTERVAL_SECONDS)
        if _alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)
        node.pid = 0

    def _save(self) -> None:
        state = {
            "brokers": self.brokers,
            "cluster_id": self.cluster_id,
            "nodes": [vars(n) for n in self.nodes],
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def load(cls, data_dir: Path) -> KafkaCluster:
        state = json.loads((data_dir / STATE_FILE).read_text())
        return cls(
            data_dir=data_dir,
            brokers=state["brokers"],
            nodes=[Node(**n) for n in state["nodes"]],
            cluster_id=state["cluster_id"],
        )


def _kraft_cluster_id() -> str:
    """16 random bytes, base64url without padding (22 characters), as `kafka-storage random-uuid` makes
    them: Kafka rejects an id whose text starts with '-' (it reads as an option; 1 id in 64 did)."""
    import base64

    for _ in range(64):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
    raise AssertionError("64 random cluster ids in a row started with '-'")


def _java(libs: Path, main_class: str, *args: str) -> list[str]:
    return [
        "java", HEAP, "-XX:+UseSerialGC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={cache_dir() / 'log4j2.xml'}",
        "-cp", f"{libs}/*", main_class, *args,
    ]  # fmt: skip


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # Not our child (started by another process): fall back to a signal probe.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ensure_client_library() -> None:
    """Readiness probes use confluent_kafka: re-run under the project's virtualenv when this Python
    lacks it (the README's `python scripts/kafka_broker.py start` on a system Python)."""
    try:
        import confluent_kafka  # noqa: F401
    except ModuleNotFoundError:
        if not VENV_PYTHON.exists() or Path(sys.prefix).resolve() == VENV_PYTHON.parent.parent.resolve():
            raise SystemExit(
                "kafka_broker.py needs confluent_kafka: run `bash scripts/bootstrap.sh` first "
                "(it creates .venv with the project's dependencies)"
            ) from None
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the broker jars (cached)")
    start = commands.add_parser("start", help="format and start a cluster")
    start.add_argument("--data-dir", type=Path, default=DATA_DIR_DEFAULT, help="default: %(default)s")
    start.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    start.add_argument("--port", type=int, default=None, help="first broker port (default: free ports)")
    for name in ("stop", "stop-broker", "start-broker", "address"):
        command = commands.add_parser(name)
        command.add_argument("--data-dir", type=Path, default=DATA_DIR_DEFAULT, help="default: %(default)s")
        if name not in ("stop", "address"):
            command.add_argument("--node", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command != "fetch":
        _ensure_client_library()
    if args.command == "fetch":
        print(fetch())
    elif args.command == "start":
        if (args.data_dir / STATE_FILE).exists() and any(
            n.pid and _alive(n.pid) for n in KafkaCluster.load(args.data_dir).nodes
        ):
            raise SystemExit(f"kafka_broker.py: a cluster is already running in {args.data_dir} (stop it first)")
        cluster = KafkaCluster(args.data_dir, brokers=args.brokers)
        try:
            cluster.start(port=args.port)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"kafka_broker.py: start failed, every node stopped: {error}") from None
        print(cluster.bootstrap_servers)
    elif not (args.data_dir / STATE_FILE).exists():
        raise SystemExit(f"kafka_broker.py: no cluster in {args.data_dir} ({STATE_FILE} missing)")
    elif args.command == "address":
        cluster = KafkaCluster.load(args.data_dir)
        if not any(n.pid and _alive(n.pid) for n in cluster.nodes):
            raise SystemExit(f"kafka_broker.py: the cluster in {args.data_dir} is not running")
        print(cluster.bootstrap_servers)
    elif args.command == "stop":
        KafkaCluster.load(args.data_dir).stop()
    elif args.command == "stop-broker":
        KafkaCluster.load(args.data_dir).stop_broker(args.node)
    else:
        KafkaCluster.load(args.data_dir).start_broker(args.node)


if __name__ == "__main__":
    main()
