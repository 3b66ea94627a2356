"""Readiness, forwarding (ARCHITECTURE.md section 8): records wait and Commerce has accepted no
batch for longer than the backoff cap ([commerce] retry_max): /readyz says so; the first batch
accepted clears it.
"""
from collect_helpers import Sim, collect_scenario, start, stop, wait_not_ready, wait_ready
from forward_helpers import forward_conf, wait_charged


def test_no_forward_for_longer_than_retry_max_is_a_reason_until_a_batch_goes(tmp_path,
                                                                            daemon_bin):
    sc = collect_scenario(2)
    with Sim(sc, faults=[{"endpoint": "commerce", "status": 503}]) as sim:
        # retry_max 2s: the cap the daemon compares with
        conf = forward_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            reason = wait_not_ready(d, conf, ["no batch forwarded for", "records wait"])
            seconds = int(reason.split("no batch forwarded for ")[1].split()[0])
            assert seconds > 2, reason
            sim.set_faults([])
            wait_charged(sim, d)
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()
