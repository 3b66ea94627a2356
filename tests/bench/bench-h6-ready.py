#!/usr/bin/python3
"""bench-h6-ready: the time from exec of azs-usaged to its READY=1 on a given store (issue 13:
ready in under 1 s with 10,000,000 records stored), measured on a NOTIFY_SOCKET of our own.

    bench-h6-ready.py --daemon BUILD/daemon/azs-usaged --store FILE [--runs N] [--cold]

The daemon gets a valid configuration whose endpoints are never reached before READY=1; it is
stopped with SIGTERM after each READY=1 (its stop time is printed too). --cold drops the store's
pages from the page cache before each run (posix_fadvise), as after a reboot. Prints one line per
run and the slowest. Not a test: scripts/bench restart can call it.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

CONFIG = """[stack]
arm_endpoint = https://127.0.0.1:9
provider_subscription = 6e26b5b6-7a9e-4b0e-a4a1-2c3b2d6c1f10
identity = aad
tenant = contoso.onmicrosoft.com
client_id = 2b8f3e55-4a4e-4c55-9d3b-7a1f0f3e9c21
client_secret_file = {dir}/secret
collect_from = 2026-11-01T00:00:00Z
poll_interval = 5m

[registration]
arm_endpoint = https://127.0.0.1:9
subscription_id = 9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718
resource_group = azurestack
name = azurestack-0b6a9e1c-5d3f-4a2e-9c8b-7f6e5d4c3b2a

[azure]
tenant = fabrikam-csp.onmicrosoft.com
client_id = 5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f
client_secret_file = {dir}/secret
login_endpoint = https://127.0.0.1:9

[commerce]
url = https://127.0.0.1:9/api/usageEvents/batch
audience = https://commerce.example/

[store]
path = {store}

[log]
level = info
"""


def uncache(path):
    """Drop a file's pages from the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_run(daemon, conf, cold, store):
    """Start the daemon, wait for READY=1; return (seconds to READY=1, seconds to stop)."""
    name = "azs-h6-ready-%s" % uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = "@" + name
    if cold:
        for p in (store, store + "-wal"):
            uncache(p)
    log = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen([daemon, "-c", conf, "--foreground"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, env=env)
    ready = None
    sock.settimeout(1.0)
    while ready is None:
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            if proc.poll() is not None:
                log.seek(0)
                sys.exit("azs-usaged exited %d before READY=1:\n%s"
                         % (proc.returncode, log.read().decode(errors="replace")[-3000:]))
            if time.monotonic() - t0 > 600:
                proc.kill()
                sys.exit("no READY=1 within 600 s")
            continue
        if "READY=1" in data.split("\n"):
            ready = time.monotonic() - t0
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=600)
    stopped = time.monotonic() - t1
    sock.close()
    if rc != 0:
        log.seek(0)
        sys.exit("azs-usaged exited %d:\n%s" % (rc, log.read().decode(errors="replace")[-3000:]))
    return ready, stopped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="azs-h6-ready-") as d:
        secret = os.path.join(d, "secret")
        with open(secret, "w") as f:
            f.write("not-a-real-secret\n")
        os.chmod(secret, 0o600)
        conf = os.path.join(d, "azs-usaged.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=d, store=os.path.abspath(args.store)))
        worst = 0.0
        for run in range(args.runs):
            ready, stopped = one_run(args.daemon, conf, args.cold, args.store)
            worst = max(worst, ready)
            print("run %d: READY=1 after %.3f s%s, stopped in %.3f s"
                  % (run + 1, ready, " (cold cache)" if args.cold else "", stopped))
        print("slowest READY=1: %.3f s" % worst)


if __name__ == "__main__":
    main()
