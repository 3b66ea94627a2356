"""A pytest plugin for meson: a run in which nothing passed or failed but something was skipped
exits 77, which meson counts as SKIP. Without it pytest exits 0 for an all-skipped file and a test
that never ran (the disk-full test without root, say) would be counted as passed.

Loaded with `-p pytest_skip77` and tests/ on PYTHONPATH (see tests/*/meson.build).
"""


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    stats = reporter.stats
    ran = any(stats.get(k) for k in ("passed", "failed", "error", "xfailed", "xpassed"))
    if not ran and stats.get("skipped"):
        session.exitstatus = 77
