"""`azs-usagectl status` asks the running daemon and still answers without it (issue 12, Deliver 6).

The real daemon runs against azs-sim with its health server on a free loopback port; Azure
Resource Manager first answers every registration request 503, so the daemon has no registration
and is not ready. `azs-usagectl -c CONF status` reads the store and asks the daemon's /v1/status
through lib/http: it shows the daemon reachable, not ready with the daemon's reason, and the
daemon's own counts. Once ARM answers and the registration is refreshed, everything is forwarded
and status shows the daemon ready, with the same counts as the store and the time of the last
batch Commerce accepted. After the daemon has stopped, status says the daemon is not reachable
and why, still prints the store's counts, and exits 0.
"""
import json
import os
import subprocess

from collect_helpers import Sim, collect_scenario, start, stop
from conftest import free_port
from forward_helpers import ctl, forward_conf, wait_charged
from waiting import limit, wait_for_port, wait_until


def status(build_dir, conf, *args):
    """azs-usagectl -c CONF [--json] status; returns the CompletedProcess (exit 0 checked)."""
    r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"), "-c", str(conf),
                        *args, "status"], capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r


def status_json(build_dir, conf):
    return json.loads(status(build_dir, conf, "--json").stdout)


def test_status_asks_the_daemon_and_answers_without_it(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(2, records_per_hour=4, page_size=4,
                          faults=[{"endpoint": "arm", "status": 503}])
    port = free_port()
    with Sim(sc) as sim:
        n = len(sim.expected_events(limit=1000000))
        conf = forward_conf(sim, tmp_path / "d", health={"listen": "127.0.0.1:%d" % port})
        path = tmp_path / "d" / "azs-usaged.conf"
        db = tmp_path / "d" / "usage.db"
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_for_port("127.0.0.1", port, 60, alive=d.proc)

            # no registration: reachable, not ready, the daemon's reason and its own view
            state = {}

            def collected_not_ready():
                st = status_json(build_dir, path)
                state["st"] = st
                daemon = st["daemon"]
                return (daemon["reachable"] and daemon["ready"] is False and
                        st["records"]["pending"] == n and
                        daemon["status"]["records"].get("pending") == n)

            wait_until(collected_not_ready, "every record collected, the daemon not ready", 60,
                       interval=0.3, alive=d.proc)
            daemon = state["st"]["daemon"]
            assert daemon["endpoint"] == "127.0.0.1:%d" % port
            assert daemon["url"] == "http://127.0.0.1:%d/v1/status" % port
            assert daemon["error"] is None
            assert daemon["reasons"], daemon
            assert any("registration" in reason for reason in daemon["reasons"]), daemon
            assert daemon["reasons"] == daemon["status"]["reasons"]
            assert daemon["status"]["version"]
            assert daemon["status"]["last_success"]["forward"] is None
            text = status(build_dir, path).stdout
            assert "daemon:           not ready: " in text, text
            assert "its counts: " in text and "pending %d" % n in text, text
            assert "last batch accepted never" in text, text

            # the registration can be had: forwarded, ready, the daemon's counts as the store's
            sim.set_faults([])
            ctl(build_dir, db, "-c", str(path), "registration", "refresh")
            wait_charged(sim, d)

            def forwarded_ready():
                st = status_json(build_dir, path)
                state["st"] = st
                return (st["daemon"]["ready"] is True and st["records"]["forwarded"] == n and
                        st["daemon"]["status"]["records"].get("forwarded") == n)

            wait_until(forwarded_ready, "the daemon ready with every record forwarded", 60,
                       interval=0.3, alive=d.proc)
            st = state["st"]
            assert st["daemon"]["reasons"] == []
            assert st["daemon"]["status"]["last_success"]["forward"].endswith("Z")
            assert st["daemon"]["status"]["registration_age_seconds"] >= 0
            for s, count in st["records"].items():
                assert st["daemon"]["status"]["records"].get(s, 0) == count, (s, st)
            text = status(build_dir, path).stdout
            assert "daemon:           ready\n" in text, text
            assert "azs-usaged %s, up " % st["daemon"]["status"]["version"] in text, text
            assert "forwarded %d" % n in text.split("its counts:")[1], text
            assert "last batch accepted 20" in text, text
            stop(d)
        finally:
            d.stop()

        # the daemon is gone: said so, the store's counts all the same, exit 0
        st = status_json(build_dir, path)
        assert st["daemon"]["reachable"] is False
        assert st["daemon"]["error"] == "Connection refused"
        assert st["daemon"]["status"] is None and st["daemon"]["ready"] is None
        assert st["records"]["forwarded"] == n
        text = status(build_dir, path).stdout
        assert ("daemon:           not reachable at 127.0.0.1:%d (Connection refused): is "
                "azs-usaged running?" % port) in text, text
        assert "forwarded %d," % n in text, text
