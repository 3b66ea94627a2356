"""The health server's address is part of the daemon's contract with its monitoring: when
[health] listen cannot be bound (another process holds the port) the daemon does not start. It
exits 1 before READY=1 with an error naming [health] listen and the address, instead of running
unwatched.
"""
import socket


def test_health_listen_in_use_stops_the_start(start_daemon, notify_socket, config):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", config.port))
        taken.listen(1)
        d = start_daemon()
        assert d.wait(timeout=10) == 1, d.log()
        _, error = d.wait_for_line(lambda f, line: f.get("level") == "error"
                                   and "[health] listen" in f.get("msg", ""))
        assert "127.0.0.1:%d" % config.port in error["msg"], error
        assert "not starting" in error["msg"], error
        assert not any("READY=1" in m.split("\n") for m in notify_socket.drain())
