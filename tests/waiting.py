"""Waiting in tests: for an event, never for a fixed time, with one scale for every limit.

A test waits for what it means (a log line, a file, a port, a count) and gives up only after a
limit. Limits are upper bounds for giving up, never assertions that something was fast: they are
generous, and all of them are multiplied by one factor, $AZS_TEST_TIME_SCALE, which scripts/test
raises for the sanitizer build (3-5 times slower). Without the variable the factor is 5 for a
build configured with a sanitizer ($AZS_BUILD_DIR/meson-info says so) and 1 otherwise, so that
`meson test -C build-asan` run by hand behaves like scripts/test.

    from waiting import limit, wait_until

    wait_until(lambda: os.path.exists(port_file), "the port file", 10, alive=proc)
    proc.wait(timeout=limit(30))

Loaded with tests/ on PYTHONPATH (see tests/*/meson.build).
"""
import json
import os
import socket
import time

SANITIZER_SCALE = 5.0


def _scale():
    value = os.environ.get("AZS_TEST_TIME_SCALE")
    if value:
        scale = float(value)
        if not scale > 0:
            raise ValueError(f"AZS_TEST_TIME_SCALE={value!r}: not a positive number")
        return scale
    build = os.environ.get("AZS_BUILD_DIR")
    if build:
        try:
            with open(os.path.join(build, "meson-info", "intro-buildoptions.json")) as f:
                options = {o["name"]: o["value"] for o in json.load(f)}
        except (OSError, ValueError, KeyError, TypeError):
            options = {}
        if options.get("b_sanitize", "none") not in ("none", "", None):
            return SANITIZER_SCALE
    return 1.0


SCALE = _scale()


def limit(seconds):
    """A limit for giving up, in seconds, scaled for the build and machine under test."""
    return seconds * SCALE


class WaitTimeout(AssertionError):
    """The event did not happen within the (scaled) limit."""


def wait_until(predicate, what, seconds, interval=0.01, alive=None):
    """Poll predicate() until it returns a true value and return that value.

    Gives up with WaitTimeout after limit(seconds), naming what was awaited. With alive (a
    subprocess.Popen), gives up at once when that process has exited and the predicate is still
    false: the event can no longer happen. interval grows to at most 0.1 s between polls.
    """
    deadline = time.monotonic() + limit(seconds)
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            value = predicate()  # it may have happened just before the exit
            if value:
                return value
            raise WaitTimeout(f"gave up waiting for {what}: the process exited with "
                              f"{alive.returncode}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"gave up waiting for {what} after {limit(seconds):.1f} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def wait_for_file(path, seconds, alive=None):
    """Wait until path exists; return it."""
    wait_until(lambda: os.path.exists(path), f"{path} to exist", seconds, alive=alive)
    return path


def wait_for_port(host, port, seconds, alive=None):
    """Wait until a TCP connection to (host, port) succeeds."""
    def accepts():
        try:
            with socket.create_connection((host, port), timeout=limit(1)):
                return True
        except OSError:
            return False
    return wait_until(accepts, f"{host}:{port} to accept connections", seconds, alive=alive)
