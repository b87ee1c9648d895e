"""Many worker processes, one memory: real processes (multiprocessing ``spawn``), each with its
own `PostgresColdStore` on the same PostgreSQL database.

- workers take turns putting into the same tenants; right after one acknowledges a put,
  another worker's search finds it, and at the end every worker sees every acknowledged
  item, with no seq issued twice;
- the same with all workers putting at once;
- a worker SIGKILLed in the middle of a put (inside its transaction, holding the tenant's
  row lock) loses nothing acknowledged, leaves nothing half-written, and the others carry on.

Through the facade (skipped while `TieredContext` does not catch up with a shared store,
issue 16): four workers alternate the turns of 20 threads, with `TieredContext` and with
``create_agent`` + `TieredContextMiddleware` on `PostgresStore` + `PostgresSaver`, and every
assembly / model call equals the one a single process makes; one worker SIGKILLed inside a
put's transaction loses only that unacknowledged put, and the others assemble every later
turn as one process that never made it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Any

import pytest

pytest.importorskip("psycopg")

from tiered_context.postgres import PostgresColdStore  # noqa: E402

TIMEOUT = 60.0
TENANTS = [f"thread-{k}" for k in range(5)]


# -- the worker process ------------------------------------------------------------------------
class _StallingStore(PostgresColdStore):
    """Stalls inside `add`'s transaction (after its inserts, before the commit) once told to."""

    stall: Any = None  # an Event set by the worker's command

    def _write(self, cur, tid, fresh, dim):
        super()._write(cur, tid, fresh, dim)
        if self.stall is not None and self.stall():
            cur.execute("SELECT 1")
            cur.fetchone()  # the pipeline has run every statement: the tenant's row is locked
            time.sleep(3600)  # killed here


def _fact(tenant: str, key: int, worker: int) -> str:
    return f"fact {key} of {tenant}: worker {worker} filed ticket zq{key}x for the vendor audit"


def _worker(uri: str, index: int, commands: Any, results: Any) -> None:
    import numpy as np  # noqa: F401

    from tiered_context.core import normalize
    from tiered_context import ContextItem
    from tiered_context.testing import HashEmbedder

    emb = HashEmbedder(dim=64)
    store = _StallingStore(uri, max_size=2)
    stall = {"on": False}
    store.stall = lambda: stall["on"]

    def put(tenant: str, key: int) -> None:
        seq = store.next_seqs(tenant, 1)[0]
        text = _fact(tenant, key, index)
        item = ContextItem.create(text, role="user", id=f"{tenant}/{key}", metadata={"worker": index}).evolve(seq=seq)
        store.add(tenant, [item], normalize(emb.embed([text])))
        results.put(("ack", index, tenant, item.id, seq, key))

    def seen(tenant: str, key: int, worker: int) -> bool:
        text = _fact(tenant, key, worker)
        hits = store.search(tenant, text, normalize(emb.embed([text]))[0], limit=5).hits
        return f"{tenant}/{key}" in {h.item.id for h in hits}

    results.put(("ready", index, os.getpid()))
    while True:
        cmd = commands.get()
        try:
            if cmd[0] == "put":
                put(cmd[1], cmd[2])
            elif cmd[0] == "burst":  # put keys round-robin over the tenants, as fast as possible
                for n, key in enumerate(cmd[2]):
                    put(cmd[1][n % len(cmd[1])], key)
                results.put(("burst-done", index))
            elif cmd[0] == "stall-next":
                stall["on"] = True
                results.put(("stalling", index))
                put(cmd[1], cmd[2])  # never returns: the parent kills this process inside the transaction
            elif cmd[0] == "seen":
                results.put(("seen", index, seen(cmd[1], cmd[2], cmd[3])))
            elif cmd[0] == "report":  # what this worker sees of every tenant
                report = {}
                for tenant in cmd[1]:
                    items = store.items(tenant)
                    report[tenant] = {
                        "ids": [i.id for i in items], "seqs": [i.seq for i in items],
                        "watermark": store.watermark(tenant), "count": store.count(tenant),
                        "found": all(seen(tenant, int(i.id.rsplit("/", 1)[1]), i.metadata["worker"]) for i in items),
                    }
                results.put(("report", index, report))
            elif cmd[0] == "stop":
                store.close()
                results.put(("stopped", index))
                return
        except Exception as exc:  # report, do not hang the parent
            results.put(("error", index, repr(exc)))


# -- the parent's side ---------------------------------------------------------------------------
class Workers:
    def __init__(self, uri: str, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=(uri, i, self.commands[i], self.results), daemon=True)
                      for i in range(n)]
        for p in self.procs:
            p.start()
        self.pids = {}
        for _ in range(n):
            msg = self.expect("ready")
            self.pids[msg[1]] = msg[2]
        self.acks: list[tuple[Any, ...]] = []

    def expect(self, kind: str) -> tuple[Any, ...]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                msg = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} from the workers within {TIMEOUT} s") from None
            if msg[0] == "error":
                raise AssertionError(f"worker {msg[1]} failed: {msg[2]}")
            if msg[0] == "ack":
                self.acks.append(msg)
                if kind == "ack":
                    return msg
                continue
            if msg[0] == kind:
                return msg
            raise AssertionError(f"expected {kind!r}, got {msg!r}")

    def send(self, worker: int, *cmd: Any) -> None:
        self.commands[worker].put(cmd)

    def reports(self, alive: list[int]) -> dict[int, dict[str, Any]]:
        for w in alive:
            self.send(w, "report", TENANTS)
        return {msg[1]: msg[2] for msg in (self.expect("report") for _ in alive)}

    def close(self) -> None:
        for w, p in enumerate(self.procs):
            if p.is_alive():
                self.send(w, "stop")
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def _check(workers: Workers, reports: dict[int, dict[str, Any]]) -> None:
    """Every acknowledged item is seen by every worker, exactly once, and no seq is repeated."""
    acked: dict[str, dict[str, int]] = {t: {} for t in TENANTS}
    for _, _, tenant, item_id, seq, _ in workers.acks:
        acked[tenant][item_id] = seq
    first = next(iter(reports.values()))
    for w, report in reports.items():
        for tenant in TENANTS:
            got = report[tenant]
            assert set(acked[tenant]) <= set(got["ids"]), (w, tenant)  # nothing acknowledged is lost
            assert len(got["ids"]) == len(set(got["ids"])) == got["watermark"] == got["count"]  # nor duplicated
            assert len(set(got["seqs"])) == len(got["seqs"])  # no seq issued twice
            assert all(dict(zip(got["ids"], got["seqs"]))[i] == s for i, s in acked[tenant].items())
            assert got["found"], (w, tenant)  # each worker's search finds every item
            assert got == first[tenant]  # every worker sees the same


@pytest.mark.parametrize("n", [2, 4])
def test_workers_taking_turns_see_every_acknowledged_put_at_once(postgres_uri, n):
    PostgresColdStore(postgres_uri).close()  # the schema, before the workers race to it
    workers = Workers(postgres_uri, n)
    try:
        for turn in range(40):
            tenant, writer = TENANTS[turn % len(TENANTS)], turn % n
            workers.send(writer, "put", tenant, turn)
            ack = workers.expect("ack")
            reader = (writer + 1 + (turn // n) % (n - 1)) % n  # each other worker in turn
            workers.send(reader, "seen", tenant, turn, writer)
            assert workers.expect("seen")[2], f"worker {reader} did not find {ack[3]} right after worker {writer} acknowledged it"
        for w in range(n):  # all at once now, into the same tenants
            workers.send(w, "burst", TENANTS, list(range(1000 * (w + 1), 1000 * (w + 1) + 30)))
        for _ in range(n):
            workers.expect("burst-done")
        assert len(workers.acks) == 40 + 30 * n
        _check(workers, workers.reports(list(range(n))))
    finally:
        workers.close()


def test_a_worker_killed_mid_put_loses_nothing_and_the_others_carry_on(postgres_uri):
    PostgresColdStore(postgres_uri).close()
    workers = Workers(postgres_uri, 4)
    try:
        for turn in range(12):
            workers.send(turn % 4, "put", TENANTS[turn % len(TENANTS)], turn)
            workers.expect("ack")
        victim = 2
        workers.send(victim, "stall-next", TENANTS[0], 999)  # holds TENANTS[0]'s row lock, uncommitted
        workers.expect("stalling")
        for w in (0, 1, 3):  # the others put into every tenant, TENANTS[0] included: they wait on the lock...
            workers.send(w, "burst", TENANTS, list(range(1000 * (w + 1), 1000 * (w + 1) + 20)))
        time.sleep(1.0)
        os.kill(workers.pids[victim], signal.SIGKILL)  # ...until the victim dies mid-transaction
        workers.procs[victim].join(timeout=10)
        for _ in range(3):
            workers.expect("burst-done")
        assert len(workers.acks) == 12 + 60
        reports = workers.reports([0, 1, 3])
        _check(workers, reports)
        ids = next(iter(reports.values()))[TENANTS[0]]["ids"]
        assert f"{TENANTS[0]}/999" not in ids  # the killed put was never acknowledged, nor half-written
        assert sum(len(r["ids"]) for r in next(iter(reports.values())).values()) == 72
    finally:
        workers.close()


# -- prepared for the facade's coherence (issue 16) ---------------------------------------------
def _context_worker(uri: str, index: int, commands: Any, results: Any) -> None:
    from tiered_context import Budget, TieredContext
    from tiered_context.testing import HashEmbedder

    store, contexts = _StallingStore(uri, max_size=2), {}
    stall = {"on": False}
    store.stall = lambda: stall["on"]
    results.put(("ready", index, os.getpid()))
    while True:
        cmd = commands.get()
        if cmd[0] == "stop":
            for ctx in contexts.values():
                ctx.flush()  # close() would close the shared store
            store.close()
            results.put(("stopped", index))
            return
        kind, thread, turn, text, query = cmd
        try:
            ctx = contexts.get(thread)
            if ctx is None:
                ctx = contexts[thread] = TieredContext(session_id=thread, store=store, embedder=HashEmbedder(),
                                                      budget=Budget(max_tokens=300), compaction="inline")
            if kind == "stall":  # this put never returns: the parent kills the worker inside its transaction
                stall["on"] = True
                results.put(("stalling", index))
            ctx.put(text, role="user", id=f"{thread}/{turn}", timestamp=1_700_000_000.0 + turn)
            out = ctx.assemble(query, budget=200)
            results.put(("assembled", index, thread, turn, [i.id for i in out.items]))
        except Exception as exc:
            results.put(("error", index, repr(exc)))


def _run_contexts(uri: str, n: int, *, turns: int = 12, threads: int = 20,
                  lost: tuple[int, int] | None = None) -> dict[tuple[str, int], list[str]]:
    """Turn `t` of thread `h` goes to worker ``(t + h) % n`` (of those alive); the ids each
    assembly returned. `lost` = (thread, turn): that put is lost: with one worker it is never
    made, with several its worker is SIGKILLed in the middle of it and the others carry on."""
    PostgresColdStore(uri).close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    commands = [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=_context_worker, args=(uri, i, commands[i], results), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    pids = dict(results.get(timeout=TIMEOUT)[1:] for _ in range(n))
    alive, got = list(range(n)), {}
    try:
        for turn in range(turns):
            for thread in range(threads):
                text, query = _turn_text(thread, turn)
                worker = alive[(turn + thread) % len(alive)]
                if (thread, turn) == lost:
                    if n == 1:
                        continue
                    commands[worker].put(("stall", f"t{thread}", turn, text, query))
                    assert results.get(timeout=TIMEOUT)[0] == "stalling"
                    time.sleep(0.5)
                    os.kill(pids[worker], signal.SIGKILL)
                    procs[worker].join(timeout=10)
                    alive.remove(worker)
                    continue
                commands[worker].put(("turn", f"t{thread}", turn, text, query))
                msg = results.get(timeout=TIMEOUT)
                assert msg[0] == "assembled", msg
                got[(msg[2], msg[3])] = msg[4]
    finally:
        for w in alive:
            commands[w].put(("stop",))
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return got


def _turn_text(thread: int, turn: int) -> tuple[str, str]:
    text = (f"In thread {thread} the badge number is {88000 + thread}." if turn == 2 else
            f"Turn {turn} of thread {thread}: museums, trams, pastries and the hotel breakfast were discussed.")
    return text, f"What is the badge number of thread {thread}?"


def test_tiered_context_workers_assemble_what_one_process_would(postgres_server):
    """Four workers alternate the turns of 20 threads; each assembly equals the single-process one."""
    single, multi = postgres_server.create_database(), postgres_server.create_database()
    try:
        assert _run_contexts(postgres_server.uri(multi), 4) == _run_contexts(postgres_server.uri(single), 1)
    finally:
        postgres_server.drop_database(single)
        postgres_server.drop_database(multi)


def test_tiered_context_workers_carry_on_after_one_is_killed_mid_put(postgres_server):
    """A worker SIGKILLed inside a put's transaction: the put is lost as if never made (it was
    never acknowledged), the thread's row lock is released, and the three others assemble
    every later turn exactly as one process that never made that put."""
    single, multi = postgres_server.create_database(), postgres_server.create_database()
    try:
        lost = (5, 6)  # thread 5, turn 6: the badge of thread 5 was said at turn 2, and survives
        killed = _run_contexts(postgres_server.uri(multi), 4, turns=9, lost=lost)
        assert killed == _run_contexts(postgres_server.uri(single), 1, turns=9, lost=lost)
        assert all("t5/6" not in ids for ids in killed.values())
    finally:
        postgres_server.drop_database(single)
        postgres_server.drop_database(multi)


def _agent_worker(uri: str, index: int, commands: Any, results: Any, stalled: Any = None) -> None:
    """One worker process: `create_agent` + the middleware on PostgresStore + PostgresSaver,
    running the turns it is sent. With `stalled` (an Event), a "stall" turn's model call sets
    it and never returns: by then the turn's input checkpoint and the middleware's archive
    writes are committed, and the parent SIGKILLs the worker there."""
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    from tiered_context.langchain import TieredContextMiddleware
    from tiered_context.langchain.testing import RecordingChatModel
    from tiered_context.testing import HashEmbedder

    stall = {"on": False}

    class StallingModel(RecordingChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            if stall["on"]:
                stalled.set()  # the parent's wait returns once this has left the Event's lock
                time.sleep(3600)  # killed here, inside the model call
            return super()._generate(messages, stop, run_manager, **kwargs)

    with PostgresStore.from_conn_string(uri) as store, PostgresSaver.from_conn_string(uri) as saver:
        model = StallingModel(responses=["Noted."])
        mw = TieredContextMiddleware(max_tokens=300, working_set_tokens=150, compaction="inline", embedder=HashEmbedder())
        agent = create_agent(model, tools=[], middleware=[mw], store=store, checkpointer=saver)
        results.put(("ready", index, os.getpid()))
        while True:
            cmd = commands.get()
            if cmd[0] == "stop":
                mw.close()
                results.put(("stopped", index))
                return
            kind, thread, turn, text = cmd
            stall["on"] = kind == "stall"
            try:
                agent.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread}})
                results.put(("called", index, thread, turn, [m.text for m in model.calls[-1]]))
            except Exception as exc:
                results.put(("error", index, repr(exc)))


def test_create_agent_workers_make_the_model_calls_one_process_would(postgres_server):
    """Four workers, each with its own create_agent + TieredContextMiddleware on PostgresStore +
    PostgresSaver, alternate the turns of 20 threads: every model call equals the single-process one."""
    pytest.importorskip("langgraph.checkpoint.postgres")
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    runs, names = {}, []
    try:
        for n in (1, 4):
            name = postgres_server.create_database()
            names.append(name)
            uri = postgres_server.uri(name)
            with PostgresStore.from_conn_string(uri) as store, PostgresSaver.from_conn_string(uri) as saver:
                store.setup()
                saver.setup()
            PostgresColdStore(uri).close()
            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            commands = [ctx.Queue() for _ in range(n)]
            procs = [ctx.Process(target=_agent_worker, args=(uri, i, commands[i], results), daemon=True) for i in range(n)]
            for p in procs:
                p.start()
            for _ in range(n):
                assert results.get(timeout=TIMEOUT)[0] == "ready"
            got = {}
            for turn in range(10):
                for thread in range(20):
                    text, _ = _turn_text(thread, turn)
                    commands[(turn + thread) % n].put(("turn", f"t{thread}", turn, text))
                    msg = results.get(timeout=TIMEOUT)
                    assert msg[0] == "called", msg
                    got[(msg[2], msg[3])] = msg[4]
            for q in commands:
                q.put(("stop",))
            for p in procs:
                p.join(timeout=30)
            runs[n] = got
        assert runs[4] == runs[1]
    finally:
        for name in names:
            postgres_server.drop_database(name)


def _run_killed_agents(uri: str, n: int, kill: tuple[int, int], *, turns: int, threads: int) -> dict[str, Any]:
    """Turn `t` of thread `h` goes to worker ``alive[(t + h) % len(alive)]``; at `kill` =
    (thread, turn) that worker is SIGKILLed inside the model call and the others carry on
    (with one worker, a fresh process takes over, as a restarted server would). Returns the
    model calls, each thread's archive (commit order) and its final checkpointed messages."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    with PostgresStore.from_conn_string(uri) as store, PostgresSaver.from_conn_string(uri) as saver:
        store.setup()
        saver.setup()
    PostgresColdStore(uri).close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    commands, events, procs, pids = [], [], [], {}

    def spawn() -> int:
        w = len(procs)
        commands.append(ctx.Queue())
        events.append(ctx.Event())
        procs.append(ctx.Process(target=_agent_worker, args=(uri, w, commands[w], results, events[w]), daemon=True))
        procs[w].start()
        return w

    def expect(kind: str) -> tuple[Any, ...]:
        msg = results.get(timeout=TIMEOUT)
        assert msg[0] == kind, msg
        return msg

    alive = [spawn() for _ in range(n)]
    for _ in range(n):
        _, w, pid = expect("ready")
        pids[w] = pid
    calls: dict[tuple[str, int], list[str]] = {}
    try:
        for turn in range(turns):
            for thread in range(threads):
                text, _ = _turn_text(thread, turn)
                worker = alive[(turn + thread) % len(alive)]
                if (thread, turn) == kill:
                    commands[worker].put(("stall", f"t{thread}", turn, text))
                    assert events[worker].wait(TIMEOUT), "the victim never reached its model call"
                    os.kill(pids[worker], signal.SIGKILL)
                    procs[worker].join(timeout=10)
                    assert procs[worker].exitcode == -signal.SIGKILL
                    alive.remove(worker)
                    if not alive:
                        alive.append(spawn())
                        _, w, pid = expect("ready")
                        pids[w] = pid
                    continue
                commands[worker].put(("turn", f"t{thread}", turn, text))
                msg = expect("called")
                calls[(msg[2], msg[3])] = msg[4]
    finally:
        for w in alive:
            commands[w].put(("stop",))
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    archive, state = {}, {}
    cold = PostgresColdStore(uri, space="tiered_context")
    try:
        with PostgresSaver.from_conn_string(uri) as saver:
            for thread in range(threads):
                items = cold.items(f"t{thread}")  # the middleware's tenant of a thread without a user
                archive[f"t{thread}"] = [(i.id, i.seq, i.role, i.text, i.is_derived) for i in items]
                saved = saver.get_tuple({"configurable": {"thread_id": f"t{thread}"}})
                state[f"t{thread}"] = [(m.type, m.text) for m in saved.checkpoint["channel_values"]["messages"]]
    finally:
        cold.close()
    return {"calls": calls, "archive": archive, "state": state}


def test_create_agent_workers_carry_on_after_one_is_killed_mid_model_call(postgres_server):
    """Four workers (create_agent + TieredContextMiddleware on PostgresStore + PostgresSaver)
    alternate the turns of 20 threads; one is SIGKILLed inside a model call, after its turn's
    checkpoint and archive writes. The three others carry on: every later model call equals
    the one a single process makes when it is killed at the same point and restarted, no
    acknowledged message is lost or duplicated (in the checkpoints, in the archive, in any
    later model call), no item or summary is archived twice, and no seq is issued twice."""
    pytest.importorskip("langgraph.checkpoint.postgres")
    turns, threads, kill = 8, 20, (5, 5)
    runs, names = {}, []
    try:
        for n in (1, 4):
            names.append(postgres_server.create_database())
            runs[n] = _run_killed_agents(postgres_server.uri(names[-1]), n, kill, turns=turns, threads=threads)
        one, four = runs[1], runs[4]
        killed_text = _turn_text(*kill)[0]
        acked = {f"t{h}": [_turn_text(h, t)[0] for t in range(turns) if (h, t) != kill] for h in range(threads)}
        assert len(four["calls"]) == turns * threads - 1  # every later turn succeeded
        assert four["calls"] == one["calls"]  # the model calls of one process killed and restarted
        for thread, rows in four["archive"].items():
            assert [r[2:] for r in rows] == [r[2:] for r in one["archive"][thread]], thread  # same records, same order
            ids, seqs = [r[0] for r in rows], [r[1] for r in rows]
            assert len(ids) == len(set(ids)) and len(seqs) == len(set(seqs)), thread  # nothing archived twice
            humans = [r[3] for r in rows if r[2] == "user" and not r[4]]
            assert len(humans) == len(set(humans)), thread  # no message archived twice
            said = [t for kind, t in four["state"][thread] if kind == "human"]
            assert four["state"][thread] == one["state"][thread]
            assert [t for t in said if t != killed_text] == acked[thread], thread  # none lost, none duplicated
            assert set(humans) <= set(said)
            assert humans, thread  # the thread's history did reach the archive
        for (thread, turn), texts in four["calls"].items():
            for text in acked[thread][:turn]:  # an acknowledged message sent at most once per call
                assert sum(text in t for t in texts) <= 1, (thread, turn, text)
            assert sum(killed_text in t for t in texts) <= 1
    finally:
        for name in names:
            postgres_server.drop_database(name)
