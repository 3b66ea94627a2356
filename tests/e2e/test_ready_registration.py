"""Readiness, the registration (ARCHITECTURE.md sections 5 and 8):

* a registration cache older than max_staleness (ARM failing, the cache kept) is a reason until a
  refresh works again;
* a registration naming one tenant twice holds that tenant's records as `ambiguous`: a reason
  (beside the registration's own), until the operator removes one entry with azs-usagectl, the
  held records are mapped again and forwarded; records held only until the tenant cache knows
  their subscription (`unknown-subscription`) never are one.
"""
import os
import subprocess

from collect_helpers import (Sim, collect_scenario, start, stop, wait_not_ready,
                             wait_reason_gone, wait_ready)
from forward_helpers import by_state, forward_conf
from waiting import limit, wait_until

TENANT = "7a3c1e55-0d2b-4f6a-9e81-3b5c7d9f1a20"
CUSTOMER_1 = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e61"
CUSTOMER_2 = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e62"


def test_stale_registration_is_a_reason_until_a_refresh_works(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        conf = forward_conf(sim, tmp_path / "d",
                            registration={"refresh_interval": "1s", "max_staleness": "4s"})
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_ready(d, conf)
            sim.set_faults([{"endpoint": "arm", "status": 503}])
            wait_not_ready(d, conf, ["registration cache stale"])
            sim.set_faults([])
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()


def ctl(build_dir, conf_path, *args):
    r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"), "-c",
                        conf_path, *args], capture_output=True, text=True, timeout=limit(120))
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_ambiguous_records_are_a_reason_until_the_registration_is_mended(tmp_path, daemon_bin,
                                                                         build_dir):
    # one directory tenant with two registered customer subscriptions, one ordinary tenant
    tenants = [{"tenantId": TENANT, "registered": CUSTOMER_1, "subscriptions": 1},
               {"tenantId": TENANT, "registered": CUSTOMER_2, "subscriptions": 1},
               {"registered": False, "subscriptions": 1}]
    sc = collect_scenario(2, tenants=tenants)
    with Sim(sc) as sim:
        conf = forward_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        db = tmp_path / "d" / "usage.db"
        try:
            reason = wait_not_ready(d, conf, ["records held as ambiguous"])
            assert int(reason.split()[0]) > 0, reason
            wait_not_ready(d, conf, ["registration names a tenant twice"])
            assert (by_state(build_dir, db) or {}).get("held", 0) > 0
            # the operator removes one entry; the registration changes, the held records are
            # mapped again (to the entry that is left) and forwarded
            ctl(build_dir, os.path.join(str(tmp_path / "d"), "azs-usaged.conf"),
                "tenant", "remove", CUSTOMER_2)
            wait_reason_gone(d, conf, ["records held as ambiguous"])
            # (the simulator's expected charges follow its own tenant entries, not the
            # daemon's one tenant: the store says where the records went)
            wait_until(lambda: set(by_state(build_dir, db) or {"none": 0}) == {"forwarded"},
                       "every record forwarded", 90, interval=0.3, alive=d.proc)
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()
