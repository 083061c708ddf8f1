"""Zenoh transport settings reach Zenoh: mTLS, access control, a user's config file, client mode, partitions, ports.

Every session is on loopback (127.0.0.1) except the partition test, which runs
its two sessions in network namespaces it creates and deletes itself. Waits
poll for an event with a generous deadline; the only fixed windows are the
"nothing arrives" ones, which can only make a test pass more slowly, never fail.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from tcp_proxy import TcpProxy

from jepa_edge.config import ConfigError, from_dict
from jepa_edge.fleet.transport import (
    RESERVATION_MAX_AGE_S,
    FleetTransportError,
    TlsConfig,
    TransportConfig,
    _reserve_port,
    free_loopback_ports,
    open_session,
    zenoh_config,
)

ROOT = Path(__file__).resolve().parents[1]
QUIET_S = 2.0  # how long "nothing arrives" is watched for
DEADLINE_S = 30.0  # generous bound for what must happen (a loaded 2-core machine)


@pytest.fixture
def zenoh():
    return pytest.importorskip("zenoh")


@pytest.fixture
def ca(tmp_path):
    pytest.importorskip("cryptography")
    from tls_certs import make_ca

    return make_ca(tmp_path, "fleet")


def wait_until(what: str, pred: Callable[[], bool], step: Callable[[], None] | None = None,
               timeout: float = DEADLINE_S) -> None:
    """Poll ``pred`` (calling ``step`` before each try, e.g. to publish again) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def stays_false(pred: Callable[[], bool], step: Callable[[], None] | None = None, seconds: float = QUIET_S) -> bool:
    """True if ``pred`` stayed false for ``seconds`` (``step`` called on every poll)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if step is not None:
            step()
        if pred():
            return False
        time.sleep(0.05)
    return not pred()


class Received:
    """A subscriber's payloads (strings), safe to read from the test thread."""

    def __init__(self, session, key: str) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, str]] = []
        self.sub = session.declare_subscriber(key, self._on)

    def _on(self, sample) -> None:
        with self._lock:
            self._items.append((str(sample.key_expr), sample.payload.to_string()))

    def key_exprs(self) -> list[str]:
        with self._lock:
            return [k for k, _ in self._items]

    def values(self) -> list[str]:
        with self._lock:
            return [v for _, v in self._items]


@contextmanager
def sessions() -> Iterator[Callable]:
    """``open_(cfg)`` opens a session (TransportConfig or raw zenoh.Config) closed at exit, in reverse order.

    Zenoh 1.10 hangs the interpreter at exit if a session is left open, so every one is closed.
    """
    with ExitStack() as stack:
        def open_(cfg):
            if isinstance(cfg, TransportConfig):
                s = open_session(cfg)
            else:
                import zenoh

                s = zenoh.open(cfg)
            stack.callback(s.close)
            return s

        yield open_


def ep(port: int, proto: str = "tcp") -> str:
    return f"{proto}/127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------------- config only


def test_security_settings_validate_and_reach_the_json(tmp_path, ca):
    cert, key = ca.issue("node")
    (port,) = free_loopback_ports(1)
    mtls = TlsConfig(root_ca_certificate=str(ca.path), listen_certificate=str(cert), listen_private_key=str(key),
                     connect_certificate=str(cert), connect_private_key=str(key), enable_mtls=True)
    acl = {"enabled": True, "default_permission": "allow", "rules": [], "subjects": [], "policies": []}
    good = TransportConfig(listen=[ep(port, "tls")], connect=[ep(port + 1, "tls")], tls=mtls, access_control=acl)
    good.validate()
    j = json.loads(good.to_json5())
    assert j["transport"]["link"]["tls"] == {
        "root_ca_certificate": str(ca.path), "listen_certificate": str(cert), "listen_private_key": str(key),
        "connect_certificate": str(cert), "connect_private_key": str(key), "enable_mtls": True,
        "verify_name_on_connect": True}
    assert j["access_control"] == acl and j["transport"]["link"]["rx"]["max_message_size"] == 64 * 1024 * 1024 + 65536
    plain = json.loads(TransportConfig().to_json5())  # nothing set: nothing emitted
    assert "tls" not in plain["transport"]["link"] and "access_control" not in plain

    # The same settings from JSON (the CLI / FleetConfig path); unknown keys stay errors.
    assert from_dict(TransportConfig, json.loads(json.dumps({
        "listen": good.listen, "connect": good.connect, "tls": vars(mtls), "access_control": acl}))) == good
    with pytest.raises(ConfigError, match=r"tls\.root_ca"):
        from_dict(TransportConfig, {"tls": {"root_ca": "x"}})

    def refused(match: str, **kw) -> None:
        with pytest.raises(ValueError, match=match) as info:
            TransportConfig(**kw).validate()
        assert "\n" not in str(info.value)

    missing = str(tmp_path / "nope.pem")
    refused(r"tls\.listen_certificate: no file at .*nope\.pem", tls=TlsConfig(listen_certificate=missing))
    refused("listen_certificate and listen_private_key go together",
            tls=TlsConfig(listen_certificate=str(cert)))
    refused("connect_certificate and connect_private_key go together", tls=TlsConfig(connect_private_key=str(key)))
    refused("needs tls.listen_certificate", listen=[ep(port, "tls")])
    refused("enable_mtls needs tls.root_ca_certificate", tls=TlsConfig(enable_mtls=True))
    refused("needs tls.connect_certificate", connect=[ep(port, "tls")],
            tls=TlsConfig(root_ca_certificate=str(ca.path), enable_mtls=True))
    refused("access_control .*enabled", access_control={"rules": []})
    refused("access_control", access_control=["enabled"])
    refused(r"user_config: no file at .*nope\.json5", user_config=str(tmp_path / "nope.json5"))


def test_user_config_is_loaded_under_ours_and_bad_files_name_themselves(tmp_path, zenoh):
    pA, pB = free_loopback_ports(2)
    user = tmp_path / "mine.json5"
    user.write_text(textwrap.dedent(f"""\
        // a user's own Zenoh settings: comments are fine in JSON5
        {{
          mode: "client",                                   // ours wins
          listen: {{ endpoints: ["{ep(pB)}"] }},             // ours wins
          scouting: {{ delay: 123, multicast: {{ enabled: true, ttl: 3 }} }},
          transport: {{ link: {{ tx: {{ lease: 5000 }} }} }}, /* theirs: kept */
        }}
        """))
    cfg = TransportConfig(listen=[ep(pA)], user_config=str(user))
    zc = zenoh_config(cfg)
    assert json.loads(zc.get_json("mode")) == "peer"
    assert json.loads(zc.get_json("listen/endpoints")) == [ep(pA)]
    assert json.loads(zc.get_json("scouting/delay")) == 123  # theirs, in a section where we also set a key
    assert json.loads(zc.get_json("scouting/multicast/enabled")) is False  # ours ...
    assert json.loads(zc.get_json("scouting/multicast/ttl")) == 3  # ... next to theirs
    assert json.loads(zc.get_json("transport/link/tx/lease")) == 5000  # theirs, beside our rx settings
    assert json.loads(zc.get_json("transport/link/rx/max_message_size")) == cfg.max_message_bytes

    with sessions() as open_:  # the live session listens where we said, not where their file did
        a = open_(cfg)
        b = open_(TransportConfig(connect=[ep(pA)]))
        got = Received(b, "u/**")
        wait_until("a put through our listen endpoint", lambda: got.values(), step=lambda: a.put("u/x", "hi"))

    for name, text in (("broken.json5", "{ mode: peer,\n oops }"), ("unknown.json5", "{ not_a_zenoh_key: 1 }"),
                       ("config.txt", "{}")):
        (tmp_path / name).write_text(text)
        with pytest.raises(FleetTransportError) as info:
            zenoh_config(TransportConfig(user_config=str(tmp_path / name)))
        msg = str(info.value)
        assert name in msg and "user_config" in msg and "\n" not in msg and ".rs:" not in msg, msg


def test_open_session_error_shows_the_endpoints_only(tmp_path, zenoh, ca):
    cert, key = ca.issue("node")
    (port,) = free_loopback_ports(1)
    tls = TlsConfig(root_ca_certificate=str(ca.path), listen_certificate=str(cert), listen_private_key=str(key))
    acl = {"enabled": True, "default_permission": "allow"}
    with sessions() as open_:
        open_(TransportConfig(listen=[ep(port)]))
        with pytest.raises(FleetTransportError) as info:  # the port is taken by the session above
            open_(TransportConfig(listen=[ep(port)], tls=tls, access_control=acl))
    msg = str(info.value)
    assert f"session listening on {ep(port)}:" in msg and "\n" not in msg and ".rs:" not in msg, msg
    assert str(tmp_path) not in msg and "access_control" not in msg and "max_message_size" not in msg, msg

    with pytest.raises(FleetTransportError, match="unknown field `bogus`") as info:  # Zenoh checks the ACL schema
        zenoh_config(TransportConfig(access_control={"enabled": True, "bogus": 1}))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ live sessions


def test_mtls_delivers_and_refuses_peers_without_a_certificate_of_our_ca(tmp_path, zenoh, ca):
    from tls_certs import make_ca

    server, client = ca.issue("server"), ca.issue("client")
    stranger = make_ca(tmp_path, "other").issue("stranger")
    (port,) = free_loopback_ports(1)
    root = str(ca.path)

    def dialler(pair: tuple[Path, Path] | None, mtls: bool) -> TransportConfig:
        cert, key = (str(pair[0]), str(pair[1])) if pair else ("", "")
        return TransportConfig(connect=[ep(port, "tls")], tls=TlsConfig(
            root_ca_certificate=root, connect_certificate=cert, connect_private_key=key, enable_mtls=mtls))

    with sessions() as open_:
        hub = open_(TransportConfig(listen=[ep(port, "tls")], tls=TlsConfig(
            root_ca_certificate=root, listen_certificate=str(server[0]), listen_private_key=str(server[1]),
            enable_mtls=True)))
        got = Received(hub, "t/**")
        # Peer mode: Zenoh opens all three sessions; the listener refuses the TLS handshake of the two
        # without a certificate of our CA ("peer sent no certificates" / "UnknownIssuer" in Zenoh's log)
        # and they keep re-dialling.
        member = open_(dialler(client, mtls=True))
        nocert = open_(dialler(None, mtls=False))
        foreign = open_(dialler(stranger, mtls=True))

        def publish() -> None:
            for name, s in (("member", member), ("nocert", nocert), ("foreign", foreign)):
                s.put(f"t/{name}", name)

        wait_until("the mTLS member's put", lambda: "t/member" in got.key_exprs(), step=publish)
        outsiders = ("t/nocert", "t/foreign")
        assert stays_false(lambda: any(k in got.key_exprs() for k in outsiders), step=publish), got.key_exprs()
        assert [str(z) for z in hub.info.peers_zid()] == [str(member.info.zid())]
        assert list(nocert.info.peers_zid()) == [] and list(foreign.info.peers_zid()) == []


def test_access_control_denies_one_key_expression_and_lets_others_through(zenoh):
    pA, pB, pC = free_loopback_ports(3)
    acl = {"enabled": True, "default_permission": "allow",
           "rules": [{"id": "no_secret", "messages": ["put"], "flows": ["ingress"], "permission": "deny",
                      "key_exprs": ["demo/secret"]}],
           "subjects": [{"id": "anyone"}],  # a subject with no conditions matches every peer
           "policies": [{"rules": ["no_secret"], "subjects": ["anyone"]}]}
    with sessions() as open_:
        guarded = open_(TransportConfig(listen=[ep(pB)], access_control=acl))
        control = open_(TransportConfig(listen=[ep(pC)]))  # same traffic, no ACL: proves the secret is sent
        sender = open_(TransportConfig(listen=[ep(pA)], connect=[ep(pB), ep(pC)]))
        behind, open_side = Received(guarded, "demo/**"), Received(control, "demo/**")
        block = zenoh.CongestionControl.BLOCK

        def publish() -> None:  # secret first: on one link, a later "open" arriving means the secret came before
            sender.put("demo/secret", "s", congestion_control=block)
            sender.put("demo/open", "o", congestion_control=block)

        def both() -> bool:
            return "demo/open" in behind.key_exprs() and "demo/secret" in open_side.key_exprs()

        wait_until("both receivers", both, step=publish)
        assert "demo/secret" not in behind.key_exprs()


def test_clients_exchange_through_a_router(zenoh):
    (port,) = free_loopback_ports(1)
    router_cfg = zenoh.Config.from_json5(json.dumps({
        "mode": "router", "listen": {"endpoints": [ep(port)]}, "scouting": {"multicast": {"enabled": False}}}))
    with sessions() as open_:
        router = open_(router_cfg)
        a = open_(TransportConfig(mode="client", connect=[ep(port)]))
        b = open_(TransportConfig(mode="client", connect=[ep(port)]))
        assert [str(z) for z in a.info.routers_zid()] == [str(router.info.zid())]
        got = Received(b, "r/**")
        b.declare_queryable("r/ask", lambda q: q.reply("r/ask", "answer"))
        wait_until("a put relayed by the router", lambda: got.values(), step=lambda: a.put("r/x", "hi"))
        replies: list[str] = []

        def ask() -> None:
            replies.extend(r.ok.payload.to_string() for r in a.get("r/ask", timeout=5.0) if r.ok is not None)

        wait_until("a reply relayed by the router", lambda: replies, step=ask)
        assert replies[0] == "answer"


def test_no_endpoints_and_no_multicast_means_no_peers(zenoh):
    (port,) = free_loopback_ports(1)
    with sessions() as open_:
        talker = open_(TransportConfig(listen=[ep(port)]))
        linked = open_(TransportConfig(connect=[ep(port)]))
        alone = open_(TransportConfig())  # no listen, no connect, multicast scouting off (the default)
        got_linked, got_alone = Received(linked, "m/**"), Received(alone, "m/**")
        wait_until("the linked peer", lambda: got_linked.values(), step=lambda: talker.put("m/x", "hi"))
        assert stays_false(lambda: got_alone.values(), step=lambda: talker.put("m/x", "hi"))
        assert list(alone.info.peers_zid()) == [] and len(list(talker.info.peers_zid())) == 1


def test_proxy_cut_drops_the_link_and_restore_redials(zenoh):
    (port,) = free_loopback_ports(1)
    with sessions() as open_, TcpProxy(port) as proxy:
        pub = open_(TransportConfig(listen=[ep(port)]))
        sub_side = open_(TransportConfig(connect=[ep(proxy.port)]))
        got = Received(sub_side, "p/**")
        n = iter(range(10**6))

        def put(tag: str) -> Callable[[], None]:
            return lambda: pub.put("p/x", f"{tag}-{next(n)}")

        wait_until("a put through the proxy", lambda: any(v.startswith("before") for v in got.values()),
                   step=put("before"))
        proxy.cut()
        wait_until("the publisher to lose its peer", lambda: not list(pub.info.peers_zid()))
        for _ in range(20):  # no route to the subscriber now: Zenoh drops these
            put("during")()
        proxy.restore()
        wait_until("a put after the link is re-dialled", lambda: any(v.startswith("after") for v in got.values()),
                   step=put("after"))
        assert not any(v.startswith("during") for v in got.values())
        assert proxy.accepted >= 2  # the subscriber's side dialled again through the restored proxy


# ------------------------------------------------------------------------------------------ network namespaces

PEER = textwrap.dedent("""
    import sys
    from jepa_edge.fleet.transport import TransportConfig, open_session
    role, endpoint = sys.argv[1], sys.argv[2]
    cfg = TransportConfig(listen=[endpoint]) if role == "pub" else TransportConfig(connect=[endpoint])
    session = open_session(cfg)
    try:
        if role == "sub":
            session.declare_subscriber("n/**", lambda s: print("got", s.payload.to_string(), flush=True))
        print("ready", flush=True)
        for line in sys.stdin:  # pub: one put per line; sub: runs until stdin closes
            if role == "pub":
                session.put("n/x", line.strip())
    finally:
        session.close()
""")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str, str]]:
    """(ns1, ns2, ns1's interface): a veth pair 10.231.7.1 <-> 10.231.7.2 between two fresh namespaces."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 100000}"
    ns1, ns2, v1, v2 = f"jep{tag}a", f"jep{tag}b", f"jv{tag}a", f"jv{tag}b"
    made: list[str] = []
    try:
        for ns in (ns1, ns2):
            r = _ip("netns", "add", ns)
            if r.returncode:
                pytest.skip(f"ip netns add not permitted here: {r.stderr.strip()}")
            made.append(ns)
        for cmd in (["link", "add", v1, "type", "veth", "peer", "name", v2], ["link", "set", v1, "netns", ns1],
                    ["link", "set", v2, "netns", ns2], ["-n", ns1, "addr", "add", "10.231.7.1/24", "dev", v1],
                    ["-n", ns2, "addr", "add", "10.231.7.2/24", "dev", v2], ["-n", ns1, "link", "set", v1, "up"],
                    ["-n", ns2, "link", "set", v2, "up"], ["-n", ns1, "link", "set", "lo", "up"],
                    ["-n", ns2, "link", "set", "lo", "up"]):
            r = _ip(*cmd)
            if r.returncode:
                pytest.skip(f"cannot build the veth link (ip {' '.join(cmd)}): {r.stderr.strip()}")
        yield ns1, ns2, v1
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and with it the other end
            _ip("netns", "del", ns)


class Child:
    """A PEER subprocess in a namespace; its stdout lines arrive on ``lines``."""

    def __init__(self, ns: str, role: str, endpoint: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PEER, role, endpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def drain(self) -> list[str]:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.slow
def test_netns_partition_blocks_delivery_and_healing_restores_it(zenoh):
    with two_namespaces() as (ns1, ns2, link), ExitStack() as stack:
        endpoint = "tcp/10.231.7.1:7447"  # a fresh namespace: no other process can hold this port
        pub, sub = Child(ns1, "pub", endpoint), Child(ns2, "sub", endpoint)
        for child in (sub, pub):
            stack.callback(child.stop)
        for child in (pub, sub):
            line = child.lines.get(timeout=DEADLINE_S)
            assert line == "ready", child.proc.stderr.read() if child.proc.poll() is not None else line
        seen: list[str] = []
        sent: list[str] = []
        n = iter(range(10**6))

        def put(tag: str) -> Callable[[], None]:
            def send() -> None:
                sent.append(f"{tag}-{next(n)}")
                pub.send(sent[-1])
            return send

        def got(tag: str) -> Callable[[], bool]:
            return lambda: (seen.extend(sub.drain()), any(s.startswith(f"got {tag}") for s in seen))[1]

        wait_until("a put across the veth link", got("before"), step=put("before"))
        assert _ip("-n", ns1, "link", "set", link, "down").returncode == 0
        assert stays_false(got("during"), step=put("during"))  # partitioned: nothing crosses
        assert _ip("-n", ns1, "link", "set", link, "up").returncode == 0
        wait_until("a put after the partition heals", got("after"), step=put("after"))
        # Shorter than Zenoh's lease (10 s), the partition never closed the session: TCP held the puts made
        # during it and delivered them, in order, before the later ones. Delayed, not lost.
        during = [f"got {v}" for v in sent if v.startswith("during")]
        assert during and [s for s in seen if s.startswith("got during")] == during


# ------------------------------------------------------------------------------------------------------- ports


def test_port_reservations_are_honoured_until_stale(tmp_path):
    live_other = os.getppid()  # a process that is alive and not us
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = p.pid  # exited and reaped

    assert _reserve_port(40001, tmp_path) and (tmp_path / "40001").read_text() == str(os.getpid())
    assert not _reserve_port(40001, tmp_path)  # ours, still in use by us
    (tmp_path / "40002").write_text(str(live_other))
    assert not _reserve_port(40002, tmp_path)  # a live process holds it
    (tmp_path / "40003").write_text(str(dead))
    assert _reserve_port(40003, tmp_path)  # its process is gone
    (tmp_path / "40004").write_text(str(live_other))
    old = time.time() - RESERVATION_MAX_AGE_S - 60
    os.utime(tmp_path / "40004", (old, old))
    assert _reserve_port(40004, tmp_path)  # too old, even though its process runs
    (tmp_path / "40005").write_text("garbage")
    assert _reserve_port(40005, tmp_path)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["40001", "40002", "40003", "40004", "40005"]


def test_concurrent_processes_get_disjoint_ports(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        from jepa_edge.fleet.transport import free_loopback_ports
        sys.stdin.readline()  # "go": both ask at once
        print(json.dumps(free_loopback_ports(50)), flush=True)
        sys.stdin.readline()  # hold the reservations (as a worker holding its ports) until told to exit
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        got = [json.loads(p.stdout.readline()) for p in procs]
        folder = tmp_path / "jepa-edge-ports"
        owners = {int(f.name): int(f.read_text()) for f in folder.iterdir()}
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert [len(set(g)) for g in got] == [50, 50]
    assert not set(got[0]) & set(got[1])
    assert owners == {**dict.fromkeys(got[0], procs[0].pid), **dict.fromkeys(got[1], procs[1].pid)}
    assert [p.returncode for p in procs] == [0, 0]
    assert list(folder.iterdir()) == []  # released at exit
