"""/healthz says whether the daemon's loop turns (ARCHITECTURE.md section 8), and it says so at
once however busy the loop is: a thread of the health server answers it from the loop's
heartbeat. Here the loop thread itself is stopped the way a debugger stops one thread
(PTRACE_SEIZE + PTRACE_INTERRUPT on the main thread only), as a loop stuck in a callback would
be: /healthz keeps answering, 503 "stalled" once the heartbeat is older than HEALTH_STALL_MSEC
(15 s, above the store's busy time-out), while /readyz, which the loop answers, waits. Let go,
the loop answers the waiting /readyz, /healthz is 200 again and the daemon stops cleanly on
SIGTERM. Skipped where this process may not trace its child (ptrace refused).
"""
import ctypes
import json
import os
import signal
import threading
import urllib.error
import urllib.request

import pytest
from collect_helpers import Sim, collect_scenario, health_url, start, wait_ready
from forward_helpers import forward_conf
from waiting import limit, wait_until

HEALTH_STALL_MSEC = 15000  # lib/health.h
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # waitpid: any child, thread or process

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long


def get(conf, path, timeout=10):
    """(status, body) of GET path; status None when nothing answered in time."""
    try:
        with urllib.request.urlopen(health_url(conf, path), timeout=limit(timeout)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, None


def thread_state(pid, tid):
    """The state letter of one thread (t: stopped by a tracer)."""
    with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_healthz_503_while_the_loop_is_stopped_200_after(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        conf = forward_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_ready(d, conf)
            assert get(conf, "/healthz") == (200, "ok\n")

            loop = d.proc.pid  # the main thread runs the loop
            if libc.ptrace(PTRACE_SEIZE, loop, None, None) != 0:
                pytest.skip("ptrace refused: %s" % os.strerror(ctypes.get_errno()))
            seized = True
            try:
                assert libc.ptrace(PTRACE_INTERRUPT, loop, None, None) == 0, \
                    os.strerror(ctypes.get_errno())
                os.waitpid(loop, WALL)
                assert thread_state(d.proc.pid, loop) == "t"
                others = [int(t) for t in os.listdir("/proc/%d/task" % loop) if int(t) != loop]
                assert others and all(thread_state(loop, t) != "t" for t in others)

                # a question for the loop waits; /healthz does not
                waiting = {}
                asker = threading.Thread(target=lambda: waiting.update(
                    answer=get(conf, "/readyz", timeout=120)), daemon=True)
                asker.start()
                last = {}

                def stalled():
                    last["answer"] = get(conf, "/healthz")
                    return last["answer"][0] == 503

                wait_until(stalled, "/healthz answering 503 while the loop is stopped", 60,
                           interval=0.2)
                status, body = last["answer"]
                assert body.startswith("stalled: the loop has not turned for "), body
                assert int(body.split()[-2]) >= HEALTH_STALL_MSEC, body
                assert "answer" not in waiting and asker.is_alive()
            finally:
                if seized:
                    libc.ptrace(PTRACE_DETACH, loop, None, None)

            # let go: the loop answers the waiting /readyz (not ready, maybe: nothing was
            # forwarded meanwhile), /healthz says 200 again
            asker.join(limit(30))
            status, body = waiting.get("answer", (None, None))
            assert status in (200, 503) and "ready" in json.loads(body), waiting
            wait_until(lambda: get(conf, "/healthz") == (200, "ok\n"),
                       "/healthz answering 200 again", 30, interval=0.2)
            d.kill(signal.SIGTERM)
            assert d.wait(30) == 0, d.log()
        finally:
            d.stop()
