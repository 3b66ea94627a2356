"""Readiness, the store (ARCHITECTURE.md section 8): a store that cannot be written makes the
daemon not ready, with the reason, and a write that commits again makes it ready.

The store is made unwritable the way a full or broken disk would show it to SQLite, without
root or a mount: the daemon's file size limit (RLIMIT_FSIZE, set from outside with prlimit) is
lowered to 0, so every write to the database or its WAL fails with EFBIG (the daemon ignores
SIGXFSZ; SQLite answers SQLITE_IOERR). The daemon learns it from its own writes, never by
writing for a probe: Commerce answers 503 all along, so the forwarder keeps writing its retry
schedule. Raising the limit again lets the next write commit; Commerce is then let through, and
the daemon is ready again.
"""
import resource

from collect_helpers import (Sim, collect_scenario, start, stop, wait_not_ready,
                             wait_reason_gone, wait_ready)
from forward_helpers import forward_conf
from waiting import wait_until


def commerce_requests(sim):
    return [r for r in sim.requests()["requests"] if r["endpoint"] == "commerce"]


def test_store_not_writable_is_a_reason_until_a_write_commits(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        sim.set_faults([{"endpoint": "commerce", "status": 503}])
        conf = forward_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        pid = d.proc.pid
        try:
            # records are queued and their batches retried (each retry is a write)
            wait_until(lambda: len(commerce_requests(sim)) >= 2, "Commerce retries", 60,
                       interval=0.2, alive=d.proc)
            soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
            try:
                reason = wait_not_ready(d, conf, ["store not writable"])
                assert "Input/output error" in reason or "too large" in reason, reason
                assert d.alive()
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
            # the next retry's write commits: that reason goes (while Commerce still refuses)
            wait_reason_gone(d, conf, ["store not writable"])
            assert any(f["status"] == 503 for f in commerce_requests(sim)[-1:])
            sim.set_faults([])
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()
