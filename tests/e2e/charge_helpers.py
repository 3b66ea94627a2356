"""What the charge-mapping scenarios (test_charge_*.py) share: a small world of two tenants with
known ids whose reported hours are collected in two phases, the simulator's clock holding the
second phase back (its hours answer RequestEndTimeIsInFuture until the clock moves), so that a
registration change made between the phases is known to fall after every record of the first
phase was charged and before any record of the second was collected; the daemon started on it
with Commerce in use; and the waits for "everything collected so far is forwarded" and for the
daemon to have loaded a changed registration.
"""
from collect_helpers import Sim, fmt, parse, recent_hours, scenario, start, stop
from forward_helpers import by_state, ctl, ctl_json, forward_conf
from waiting import wait_until

TENANT_A = "a1a1a1a1-0000-4000-8000-00000000000a"
TENANT_B = "b2b2b2b2-0000-4000-8000-00000000000b"
SUB_A1 = "5a5a0000-0000-4000-8000-0000000000a1"
SUB_A2 = "5a5a0000-0000-4000-8000-0000000000a2"
SUB_B1 = "5b5b0000-0000-4000-8000-0000000000b1"
SUB_B2 = "5b5b0000-0000-4000-8000-0000000000b2"
CUSTOMER_A = "c0c0c0c0-0000-4000-8000-00000000000a"
CUSTOMER_B = "c0c0c0c0-0000-4000-8000-00000000000b"

PHASE_HOURS = 2  # reported hours in each phase


def two_tenants(a_registered=True, b_registered=False):
    """Tenant A (subscriptions A1, A2) and B (B1, B2), registered as asked to CUSTOMER_A/_B."""
    return [
        {"tenantId": TENANT_A, "name": "alpha", "subscriptions": [SUB_A1, SUB_A2],
         "registered": CUSTOMER_A if a_registered else False},
        {"tenantId": TENANT_B, "name": "beta", "subscriptions": [SUB_B1, SUB_B2],
         "registered": CUSTOMER_B if b_registered else False},
    ]


def phased_scenario(tenants, records_per_hour=8, **overrides):
    """2 × PHASE_HOURS recent reported hours, pages of 4, late and split records."""
    sc = scenario(hours=recent_hours(2 * PHASE_HOURS), recordsPerHour=records_per_hour,
                  pageSize=4, latePercent=20, splitPercent=20, tenants=tenants,
                  resourcesPerSubscription=2)
    sc.update(overrides)
    return sc


def phase_end(sc, phase):
    """The end of phase 1 or 2 (RFC 3339): the simulator's clock that lets it be collected."""
    return fmt(parse(sc["hours"]["from"]) + phase * PHASE_HOURS * 3600)


def in_phase(sc, reported_hour, phase):
    """True when a reported hour (RFC 3339) belongs to phase 1 or 2."""
    i = (parse(reported_hour) - parse(sc["hours"]["from"])) // (PHASE_HOURS * 3600)
    return i + 1 == phase


def phased_sim(sc):
    """The simulator with its clock at the end of phase 1."""
    return Sim(sc, now=phase_end(sc, 1))


class Run:
    """The daemon forwarding from a phased simulator: its directory, store and configuration."""

    def __init__(self, sim, daemon_bin, build_dir, directory, **sections):
        self.sim = sim
        self.build_dir = build_dir
        self.dir = directory
        self.db = directory / "usage.db"
        self.conf_path = directory / "azs-usaged.conf"
        self.daemon = start(daemon_bin, directory, forward_conf(sim, directory, **sections))

    def ctl(self, *args, check=True):
        """azs-usagectl on the daemon's store and configuration."""
        return ctl(self.build_dir, self.db, "-c", str(self.conf_path), *args, check=check)

    def records(self):
        """The store's records (azs-usagectl --json records)."""
        return ctl_json(self.build_dir, self.db, "records")

    def wait_forwarded(self, seconds=120):
        """Wait until every record the simulator expects by its clock is in the ledger and the
        store holds exactly those records, all forwarded; return the expected events."""
        want = self.sim.expected_events(limit=1000000)
        n = len(want)

        def done():
            return (self.sim.summary()["accepted"] == n and
                    by_state(self.build_dir, self.db) == {"forwarded": n})

        wait_until(done, "%d records forwarded" % n, seconds, interval=0.3,
                   alive=self.daemon.proc)
        return want

    def wait_registration(self, customers, after):
        """Wait for the daemon to log that it loaded a registration of `customers` customer
        subscriptions, after log line index `after`."""
        want = "changed: %d customer subscription" % customers
        return self.daemon.wait_for_line(
            lambda f, line: "registration" in line and want in line, timeout=60, after=after)

    def stop(self):
        stop(self.daemon)

    def kill(self):
        self.daemon.stop()


def start_phase_2(sim, sc):
    """Move the simulator's clock to the end of the scenario: phase 2 can be collected."""
    sim.set_clock(now=phase_end(sc, 2))


__all__ = ["TENANT_A", "TENANT_B", "SUB_A1", "SUB_A2", "SUB_B1", "SUB_B2", "CUSTOMER_A",
           "CUSTOMER_B", "two_tenants", "phased_scenario", "phase_end", "in_phase",
           "phased_sim", "Run", "start_phase_2"]
