"""The daemon and its store, as an operator relies on them: the daemon creates the store before it
says READY=1 and reports the queue in STATUS=; a damaged file stops it with a clear error and is
left byte for byte as it was; records a previous run left inflight go back to pending under the
same batch id (so they are re-sent under the same usageEventIds); forwarded records past the
retention are pruned while younger ones stay.
"""
import json
import os
import signal
import subprocess
import time

import pytest
from waiting import limit

READY = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c02"


def tool(build_dir, *parts):
    path = build_dir.joinpath(*parts)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built")
    return path


def torture(build_dir, *args):
    """Run store-torture; return its stdout."""
    r = subprocess.run([str(tool(build_dir, "tests", "store", "store-torture")), *map(str, args)],
                       capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def ctl_json(build_dir, db, *args):
    """azs-usagectl --store db --json args, parsed."""
    r = subprocess.run([str(tool(build_dir, "daemon", "azs-usagectl")), "--store", str(db),
                        "--json", *args], capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def store_path(config):
    return config.dir / "usage.db"


def ready(d, notify_socket):
    d.wait_for_line(lambda f, line: f.get("message_id") == READY)
    return notify_socket.wait_for("READY=1")


def test_store_is_created_before_ready_and_counted_in_status(start_daemon, notify_socket,
                                                              config, build_dir):
    db = store_path(config)
    assert not db.exists()
    d = start_daemon()
    message = ready(d, notify_socket)
    assert db.exists()
    status = [line for line in message.split("\n") if line.startswith("STATUS=")]
    assert status == ["STATUS=pending 0, dead 0, held 0, no forward yet"]
    # the file is a store azs-usagectl can read while the daemon runs
    st = ctl_json(build_dir, db, "status")
    assert st["records"]["pending"] == 0
    d.kill(signal.SIGTERM)
    assert d.wait(5) == 0


@pytest.mark.parametrize("content", [b"this is not a database\n" * 200,
                                     b"SQLite format 3\x00" + b"\x00\xff" * 4000],
                         ids=["text", "garbled"])
def test_damaged_store_stops_the_daemon_and_is_left_untouched(start_daemon, notify_socket,
                                                              config, content):
    db = store_path(config)
    db.write_bytes(content)
    d = start_daemon()
    assert d.wait(10) == 1
    _, error = d.wait_for_line(lambda f, line: f.get("level") == "error"
                               and str(db) in f.get("msg", ""))
    assert "damaged or not an azs-usaged store" in error["msg"]
    assert "untouched" in error["msg"]
    assert db.read_bytes() == content
    assert "READY=1" not in "\n".join(notify_socket.drain())


def test_inflight_records_return_to_pending_with_their_batch_id(start_daemon, notify_socket,
                                                                config, build_dir):
    db = store_path(config)
    out = torture(build_dir, "batch", db, "--records", "7").split()
    assert out[0] == "batch" and out[2] == "7"
    batch_id = out[1]
    inflight = ctl_json(build_dir, db, "records", "--state", "inflight")
    assert len(inflight) == 7

    d = start_daemon()
    message = ready(d, notify_socket)
    assert "STATUS=pending 7, dead 0, held 0, no forward yet" in message
    _, notice = d.wait_for_line(lambda f, line: "were inflight" in f.get("msg", ""))
    assert notice["records"] == "7"

    assert ctl_json(build_dir, db, "records", "--state", "inflight") == []
    pending = ctl_json(build_dir, db, "records", "--state", "pending")
    assert sorted(r["key"] for r in pending) == sorted(r["key"] for r in inflight)
    assert {r["batchId"] for r in pending} == {batch_id}
    d.kill(signal.SIGTERM)
    assert d.wait(5) == 0


def test_forwarded_records_past_retention_are_pruned(start_daemon, notify_socket, config,
                                                     build_dir):
    db = store_path(config)
    now = int(time.time())
    torture(build_dir, "batch", db, "--records", "5", "--forwarded-at", now - 3 * 3600)
    torture(build_dir, "batch", db, "--records", "4", "--forwarded-at", now - 600)
    torture(build_dir, "batch", db, "--records", "3")  # stays inflight, then pending
    assert len(ctl_json(build_dir, db, "records", "--state", "forwarded")) == 9

    config.write(changes={("store", "retention"): "2h"})
    d = start_daemon()
    ready(d, notify_socket)
    _, pruned = d.wait_for_line(lambda f, line: f.get("msg", "").startswith("pruned"))
    assert pruned["records"] == "5"

    forwarded = ctl_json(build_dir, db, "records", "--state", "forwarded")
    assert len(forwarded) == 4
    assert len(ctl_json(build_dir, db, "records", "--state", "pending")) == 3
    d.kill(signal.SIGTERM)
    assert d.wait(5) == 0
