"""What the forwarding scenarios (test_forward_*.py) share: the daemon's configuration for the
simulator with Commerce in use (short time-outs and backoff, small batches so that a scenario has
many of them), the store's records by state, and the wait for the ledger to match the expected
charges with nothing left to forward.
"""
import json
import os
import subprocess

from collect_helpers import daemon_conf, usagectl_records
from waiting import limit, wait_until


def forward_conf(sim, directory, commerce=None, **sections):
    """The collection configuration of collect_helpers plus Commerce settings for tests."""
    conf = daemon_conf(sim, directory, **sections)
    conf["commerce"].update({"batch_size": "7", "max_inflight": "3", "timeout": "3s",
                             "retry_initial": "1s", "retry_max": "2s"})
    conf["commerce"].update(commerce or {})
    return conf


def by_state(build_dir, db):
    """{state: count} of the store's records, or None when it cannot be read yet."""
    recs = usagectl_records(build_dir, db)
    if recs is None:
        return None
    out = {}
    for r in recs:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def ctl(build_dir, db, *args, check=True):
    """Run azs-usagectl on the store; returns the CompletedProcess."""
    r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"), "--store",
                        str(db)] + list(args), capture_output=True, text=True,
                       timeout=limit(60))
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def ctl_json(build_dir, db, *args):
    return json.loads(ctl(build_dir, db, "--json", *args).stdout)


def wait_charged(sim, daemon, seconds=180, done_extra=None):
    """Wait until the ledger matches the expected charges exactly; returns the summary."""
    state = {}

    def done():
        s = sim.summary()
        state["s"] = s
        if not s["comparison"]["ok"]:
            return False
        return done_extra() if done_extra else True

    wait_until(done, "the ledger matching the expected charges", seconds, interval=0.3,
               alive=daemon.proc)
    return state["s"]


__all__ = ["forward_conf", "by_state", "ctl", "ctl_json", "wait_charged"]
