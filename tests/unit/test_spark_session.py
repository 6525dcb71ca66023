"""Local-mode Spark binds its driver to loopback, not to the machine's network address."""

from __future__ import annotations

import socket

from mmpipeline.spark import is_local_master, session_conf


def test_session_conf_binds_loopback_in_local_mode_only(make_config):
    for master in ("local", "local[2]", "local[*]", "local[4,2]"):
        conf = session_conf(None, master)
        assert conf["spark.driver.host"] == "127.0.0.1" and conf["spark.driver.bindAddress"] == "127.0.0.1", master
    for master in ("spark://spark-master:7077", "yarn", "k8s://https://k:443", None):
        assert not is_local_master(master)
        assert "spark.driver.bindAddress" not in session_conf(None, master), master
    # the config's spark.conf still wins (a deliberate choice to expose a local driver)
    cfg = make_config({"spark.conf": {"spark.driver.bindAddress": "0.0.0.0"}})
    assert session_conf(cfg, "local[2]")["spark.driver.bindAddress"] == "0.0.0.0"


def _host_address() -> str | None:
    """The machine's own non-loopback address (a UDP "connect" sends nothing)."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.connect(("192.0.2.1", 9))
        return u.getsockname()[0]
    except OSError:
        return None
    finally:
        u.close()


def test_local_session_driver_listens_on_loopback(spark):
    sc = spark.sparkContext
    assert sc.master.startswith("local")
    addr = sc._jsc.sc().env().rpcEnv().address()  # the driver's RPC endpoint
    assert addr.host() == "127.0.0.1"
    # nothing answers on the machine's own network address at the driver's port
    ip = _host_address()
    if ip and not ip.startswith("127."):
        s = socket.socket()
        s.settimeout(1.0)
        try:
            assert s.connect_ex((ip, addr.port())) != 0, f"driver port {addr.port()} is open on {ip}"
        finally:
            s.close()
