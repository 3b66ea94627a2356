"""A registration cache that cannot be had holds forwarding, and forwarding resumes by itself
once the cache is fresh: Azure Resource Manager answers every registration request 503, so the
daemon collects every record but sends nothing to Commerce (mapping without the registration
could charge the wrong subscription), and `azs-usagectl status` says the registration is not
fresh. Once ARM answers again and an operator runs `azs-usagectl registration refresh`, the
daemon picks the new cache up without a restart and the ledger ends matching the expected charges.
"""
from collect_helpers import Sim, collect_scenario, start, stop
from forward_helpers import by_state, ctl, forward_conf, wait_charged
from waiting import wait_until


def test_stale_registration_holds_then_resumes(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(2, records_per_hour=10, page_size=10,
                          faults=[{"endpoint": "arm", "status": 503}])
    with Sim(sc) as sim:
        n = len(sim.expected_events(limit=1000000))
        conf = forward_conf(sim, tmp_path / "d")
        db = tmp_path / "d" / "usage.db"
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_until(lambda: (by_state(build_dir, db) or {}).get("pending") == n,
                       "every record collected", 60, interval=0.2, alive=d.proc)
            d.wait_for_line(lambda f, l: "forwarding holds" in l, timeout=60)
            assert not [r for r in sim.requests()["requests"] if r["endpoint"] == "commerce"]
            out = ctl(build_dir, db, "status").stdout
            assert "never" in out or "stale" in out, out
            assert by_state(build_dir, db) == {"pending": n}

            sim.set_faults([])
            ctl(build_dir, db, "-c", str(tmp_path / "d" / "azs-usaged.conf"), "registration",
                "refresh")
            wait_charged(sim, d, done_extra=lambda: by_state(build_dir, db) ==
                         {"forwarded": n})
            assert "forwarding resumes" in d.log()
            stop(d)
        finally:
            d.stop()
