"""The registration endpoint failing keeps the cache (issue 10, Deliver 5; ARCHITECTURE.md
section 5): the daemon fetches the registration (tenant A registered to CUSTOMER_A) and forwards
the first reported hours; then Azure Resource Manager answers every request 503 while the daemon
keeps trying every second (registration.refresh_interval = 1s, max_staleness = 1h). It logs the
failure once (not once per attempt), keeps the cached copy (its fetch time does not move, `status`
says it is not stale) and goes on forwarding: the later hours (held back by the simulator's clock
until then) are mapped on the cached registration, so the ledger matches the expected charges
exactly, A's records on CUSTOMER_A, and nothing is held. Once ARM answers again, the next refresh
succeeds and says so.
"""
import json

from charge_helpers import (CUSTOMER_A, TENANT_A, Run, in_phase, phased_scenario, phased_sim,
                            start_phase_2, two_tenants)
from waiting import wait_until

FAILED = "refreshing the registration failed (the cached copy stays in use)"


def arm_503s(sim):
    return sum(1 for q in sim.requests()["requests"]
               if q["endpoint"] == "arm" and q["status"] == 503)


def test_failing_registration_endpoint_keeps_the_cache(tmp_path, daemon_bin, build_dir):
    sc = phased_scenario(two_tenants(a_registered=True, b_registered=False))
    with phased_sim(sc) as sim:
        run = Run(sim, daemon_bin, build_dir, tmp_path / "d",
                  registration={"refresh_interval": "1s", "max_staleness": "1h"})
        try:
            run.wait_forwarded()
            held = len(run.daemon.lines)  # before its first fetch it held, as it should
            sim.set_faults([{"endpoint": "arm", "status": 503}])
            run.daemon.wait_for_line(lambda f, line: FAILED in line, timeout=30)
            fetched = run.ctl("--json", "status").stdout
            # several refreshes fail in a row; the cache stays as it was
            wait_until(lambda: arm_503s(sim) >= 4, "four failed registration refreshes", 60,
                       interval=0.3, alive=run.daemon.proc)

            start_phase_2(sim, sc)
            run.wait_forwarded()
            s = sim.summary()
            assert s["comparison"]["ok"], s["comparison"]
            status = json.loads(run.ctl("--json", "status").stdout)["registration"]
            assert status["stale"] is False, status
            assert status["refreshedAt"] == json.loads(fetched)["registration"]["refreshedAt"]
            shown = json.loads(run.ctl("--json", "registration", "show").stdout)
            assert [c["tenantId"] for c in shown["customerSubscriptions"]] == [TENANT_A], shown
            assert run.daemon.log().count(FAILED) == 1, run.daemon.log()
            assert not [line for line in run.daemon.lines[held:] if "forwarding holds" in line]
            a_late = [r for r in run.records()
                      if r["tenantId"] == TENANT_A and in_phase(sc, r["reportedHour"], 2)]
            assert a_late and all(r["chargedSubscription"] == CUSTOMER_A and
                                  r["chargeReason"] == "registered" for r in a_late), a_late
            assert arm_503s(sim) >= 4

            mark = len(run.daemon.lines)
            sim.set_faults([])
            run.daemon.wait_for_line(
                lambda f, line: "registration refreshed again after" in line, timeout=30,
                after=mark)
            run.stop()
        finally:
            run.kill()
