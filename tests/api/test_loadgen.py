"""The benchmarks' compiled load generator (scripts/loadgen, driven through ledger_testkit.loadgen) against
the real service over loopback: what it reports acknowledged is what the ledger holds, and the requests it
encodes by hand (protowire, no generated code) are the transactions the Python clients would post.
A generator that counted failures as successes, or posted other amounts or accounts, would make every
benchmark figure wrong; these tests fail then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ, SCOPE_WRITE, issue_token
from ledger_testkit import loadgen
from tests.api.conftest import Api, open_api

CLIENT = "bench"
ACCOUNTS = 4
ENTRIES_PAGES_MAX = 1_000


@pytest.fixture(scope="module")
def binary() -> Path:
    built = loadgen.build_loadgen()
    if built is None:
        pytest.skip("needs the Go toolchain (`go` on PATH) to build scripts/loadgen; CI installs it")
    return built


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, http_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


async def _accounts(api: Api) -> list[str]:
    accounts = []
    for i in range(ACCOUNTS):
        request = pb.CreateAccountRequest(
            currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
        )
        accounts.append((await api.stub.CreateAccount(request, metadata=api.auth(CLIENT))).account_id)
    return accounts


async def _entries(api: Api, account_id: str) -> int:
    """How many entries the ledger holds for the account (every page)."""
    count, token = 0, ""
    for _ in range(ENTRIES_PAGES_MAX):
        request = pb.ListAccountEntriesRequest(account_id=account_id, page_size=1000, page_token=token)
        page = await api.stub.ListAccountEntries(request, metadata=api.auth(CLIENT))
        count += len(page.entries)
        token = page.next_page_token
        if not token:
            return count
    raise AssertionError("more pages than ENTRIES_PAGES_MAX")


async def _run(binary: Path, flags: list[str]) -> dict[str, object]:
    async with loadgen.started(binary, [flags]) as (generator,):
        await generator.start()
        document: dict[str, object] = await generator.result(timeout_seconds=30)
    return document


def _token(api: Api) -> str:
    return issue_token(api.settings.auth, CLIENT, frozenset({SCOPE_READ, SCOPE_WRITE}))


@pytest.mark.parametrize("size", [0, 5], ids=["PostTransaction", "PostTransactions"])
async def test_closed_mode_acknowledges_what_the_ledger_holds(binary: Path, api: Api, size: int) -> None:
    accounts = await _accounts(api)
    flags = [
        "-mode=closed", f"-grpc=127.0.0.1:{api.server.port}", f"-token={_token(api)}",
        f"-accounts={','.join(accounts)}", "-tag=t", "-concurrency=2", f"-size={size}", "-seconds=0.5s",
    ]  # fmt: skip
    document = await _run(binary, flags)
    assert document["errors"] == {}
    done = document["done"]
    assert isinstance(done, int) and done > 0
    latencies = document["latencies"]
    assert isinstance(latencies, list) and len(latencies) == (done if size == 0 else done // size)
    # Every acknowledged transfer is in the ledger, once: two entries each, nothing more.
    assert sum([await _entries(api, account) for account in accounts]) == 2 * done
    # The first transaction is bench_api.py's transaction(accounts, key, 0): transfer_pair(0) = (0, 1), amount 1.
    key = "t-u2-0-0" if size == 0 else "t-b5x2-0-0-0"
    found = await api.stub.GetTransaction(pb.GetTransactionRequest(idempotency_key=key), metadata=api.auth(CLIENT))
    assert [(leg.type, leg.from_account_id, leg.to_account_id, leg.amount, leg.currency) for leg in found.legs] == [
        (pb.LEG_TYPE_TRANSFER, accounts[0], accounts[1], "1", "USD")
    ]
    assert (found.metadata.source, found.metadata.correlation_id) == ("bench", key)


async def test_closed_mode_counts_refused_calls_as_errors(binary: Path, api: Api) -> None:
    """A call the service refuses (here: no credentials) is an error, never an acknowledged transaction."""
    accounts = await _accounts(api)
    flags = [
        "-mode=closed", f"-grpc=127.0.0.1:{api.server.port}", "-token=not-a-token",
        f"-accounts={','.join(accounts)}", "-concurrency=1", "-size=0", "-seconds=0.2s",
    ]  # fmt: skip
    document = await _run(binary, flags)
    errors = document["errors"]
    assert document["done"] == 0
    assert isinstance(errors, dict) and set(errors) == {"UNAUTHENTICATED"} and errors["UNAUTHENTICATED"] > 0
    assert sum([await _entries(api, account) for account in accounts]) == 0


async def test_overload_mode_tallies_every_edge(binary: Path, api: Api) -> None:
    accounts = await _accounts(api)
    flags = [
        "-mode=overload", f"-grpc=127.0.0.1:{api.server.port}", f"-http-address=127.0.0.1:{api.server.http_port}",
        f"-token={_token(api)}", f"-accounts={','.join(accounts)}", "-tag=o", "-seconds=0.5s",
        "-unary=2", "-batch=1", "-batch-size=3", "-http=1",
    ]  # fmt: skip
    document = await _run(binary, flags)
    tallies = document["tallies"]
    assert isinstance(tallies, dict)
    acknowledged = 0
    for edge in ("unary", "batch", "http"):
        tally = tallies[edge]
        assert tally["other_errors"] == {}, edge
        assert tally["admitted"] or tally["admitted_warmup"], edge
        acknowledged += tally["acknowledged"]
    assert sum([await _entries(api, account) for account in accounts]) == 2 * acknowledged


def _established_to(port: int) -> int:
    """TCP connections established to `port` on this host, counted on the server's side (/proc/net/tcp*)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                count += 1
    return count


async def test_closed_mode_spreads_calls_over_its_connections(binary: Path, api: Api) -> None:
    """-connections N: N gRPC connections (as bench_api.py --connections), and every call acknowledged over them."""
    accounts = await _accounts(api)
    flags = [
        "-mode=closed", f"-grpc=127.0.0.1:{api.server.port}", f"-token={_token(api)}",
        f"-accounts={','.join(accounts)}", "-tag=c", "-concurrency=4", "-size=0", "-seconds=0.5s", "-connections=3",
    ]  # fmt: skip
    before = _established_to(api.server.port)  # This test's own channel.
    async with loadgen.started(binary, [flags]) as (generator,):
        ready = _established_to(api.server.port)  # "ready": every connection of the generator is up.
        await generator.start()
        document: dict[str, object] = await generator.result(timeout_seconds=30)
    assert ready - before == 3
    assert document["errors"] == {}
    done = document["done"]
    assert isinstance(done, int) and done > 0
    assert sum([await _entries(api, account) for account in accounts]) == 2 * done
