"""`aibox egress`: the host firewall rules of seed 004 §1, for real, in network namespaces.

The test builds a small routed network out of namespaces and veth pairs:

    client (10.77.0.2, fd77::2) ── router (forwarding; the rules go here) ── target

The target namespace owns addresses in blocked ranges (172.16.5.5,
169.254.169.254, fd00:ec2::254, the NAT64 form of 172.16.5.5) and public ones
(93.184.216.34, 2606:4700::1111, the NAT64 form of 93.184.216.34), and serves
TCP on port 80 and DNS-like echo on udp/tcp 53 on all of them. The router runs
`aibox egress apply --subnet 10.77.0.0/24 --subnet fd77::/64` (`ip netns exec`).
From the client: connections to blocked ranges are dropped (they time out),
DNS to any address and connections to public addresses pass, and replies to
connections the target opens to the client pass (established). Before the
rules everything is reachable, and after `remove` it is again, so the drops
are the rules' doing. `iptables-save` / `nft list ruleset` after `remove` equal
the output before `apply`, with and without a Docker-style DOCKER-USER chain.

Needs root, iproute2, iptables (ip6tables) and nftables. In CI (CI set) a
missing requirement fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AIBOX_BIN, _binary

SUBNET4 = "10.77.0.0/24"
SUBNET6 = "fd77::/64"
CLIENT4 = "10.77.0.2"
CLIENT6 = "fd77::2"

BLOCKED_TCP = ["172.16.5.5", "169.254.169.254", "fd00:ec2::254", "64:ff9b::ac10:505"]
PUBLIC_TCP = ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"]

# Serves "ok" on TCP ports and echoes on UDP ports, on every address of the
# namespace (dual-stack sockets). Sockets are bound before "ready" is printed.
SERVE = r"""
import socket, sys, threading
tcp_ports = [int(p) for p in sys.argv[1].split(",") if p]
udp_ports = [int(p) for p in sys.argv[2].split(",") if p]
def sock(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
def tcp(s):
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"ok\n")
        finally:
            c.close()
def udp(s):
    while True:
        data, addr = s.recvfrom(512)
        s.sendto(data, addr)
threads = [threading.Thread(target=tcp, args=(sock(socket.SOCK_STREAM, p),), daemon=True) for p in tcp_ports]
threads += [threading.Thread(target=udp, args=(sock(socket.SOCK_DGRAM, p),), daemon=True) for p in udp_ports]
for t in threads:
    t.start()
print("ready", flush=True)
threading.Event().wait()
"""

# Probes targets in parallel; prints {"tcp HOST:PORT": "open"|"timeout"|...}.
PROBE = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1])
timeout = float(sys.argv[2])
results = {}
def probe(key, proto, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                data = s.recv(16)
        else:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(b"ok-ping", (host, port))
                data, _ = s.recvfrom(64)
        results[key] = "open" if data.startswith(b"ok") else "odd:" + repr(data)
    except socket.timeout:
        results[key] = "timeout"
    except ConnectionRefusedError:
        results[key] = "refused"
    except OSError as e:
        results[key] = "error:" + str(e.errno)
threads = [threading.Thread(target=probe, args=(k, *v)) for k, v in targets.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def _requirements(tools: list[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    problem = None
    if os.geteuid() != 0:
        problem = "needs root (network namespaces and firewall rules)"
    elif missing:
        problem = (
            f"needs {', '.join(missing)} "
            "(Debian/Ubuntu: apt-get install iproute2 iptables nftables)"
        )
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


def run(argv: list[str], *, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({res.returncode}):\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        )
    return res


class Lab:
    """Three namespaces wired client ── router ── target."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.client = f"aibx{tag}c"
        self.router = f"aibx{tag}r"
        self.target = f"aibx{tag}t"
        self.procs: list[subprocess.Popen[str]] = []

    def ns(self, ns: str, *argv: str, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *argv], check=check, input=input, timeout=timeout)

    def build(self) -> None:
        for ns in (self.client, self.router, self.target):
            run(["ip", "netns", "add", ns])
            self.ns(ns, "ip", "link", "set", "lo", "up")
            # No duplicate address detection: link-local addresses would stay
            # tentative for a while and IPv6 would not flow yet.
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        run(["ip", "link", "add", "c0", "netns", self.client, "type", "veth", "peer", "name", "r0", "netns", self.router])
        run(["ip", "link", "add", "r1", "netns", self.router, "type", "veth", "peer", "name", "t0", "netns", self.target])
        c, r, t = self.client, self.router, self.target
        for ns, dev, v4, v6 in (
            (c, "c0", "10.77.0.2/24", "fd77::2/64"),
            (r, "r0", "10.77.0.1/24", "fd77::1/64"),
            (r, "r1", "10.88.0.1/24", "fd88::1/64"),
            (t, "t0", "10.88.0.2/24", "fd88::2/64"),
        ):
            self.ns(ns, "ip", "addr", "add", v4, "dev", dev)
            self.ns(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
            self.ns(ns, "ip", "link", "set", dev, "up")
        self.ns(c, "ip", "route", "add", "default", "via", "10.77.0.1")
        self.ns(c, "ip", "-6", "route", "add", "default", "via", "fd77::1")
        # The router forwards; the target is "the internet" behind it.
        self.ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.ns(r, "ip", "route", "add", "default", "via", "10.88.0.2")
        self.ns(r, "ip", "-6", "route", "add", "default", "via", "fd88::2")
        self.ns(t, "ip", "route", "add", SUBNET4, "via", "10.88.0.1")
        self.ns(t, "ip", "-6", "route", "add", SUBNET6, "via", "fd88::1")
        for addr in ("172.16.5.5/32", "169.254.169.254/32", "93.184.216.34/32"):
            self.ns(t, "ip", "addr", "add", addr, "dev", "lo")
        for addr in ("fd00:ec2::254/128", "2606:4700::1111/128", "64:ff9b::ac10:505/128", "64:ff9b::5db8:d822/128"):
            self.ns(t, "ip", "-6", "addr", "add", addr, "dev", "lo", "nodad")
        for ns in (c, r, t):
            self._wait_no_tentative(ns)
        self.serve(t, "80,53", "53")
        self.serve(c, "7000", "")
        # Neighbour discovery on fresh veths takes about a second; wait until
        # both families flow end to end before any test asserts anything.
        ready = [("tcp", "93.184.216.34", 80), ("tcp", "2606:4700::1111", 80)]
        deadline = time.monotonic() + 15
        while set(self.probe(c, ready, timeout=0.3).values()) != {"open"}:
            assert time.monotonic() < deadline, "the namespaces' network never came up"

    def _wait_no_tentative(self, ns: str) -> None:
        deadline = time.monotonic() + 10
        while self.ns(ns, "ip", "-6", "addr", "show", "tentative").stdout.strip():
            assert time.monotonic() < deadline, f"IPv6 addresses in {ns} stay tentative"
            time.sleep(0.05)

    def serve(self, ns: str, tcp: str, udp: str) -> None:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", SERVE, tcp, udp],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", f"server in {ns} did not start: {line!r} {p.stderr.read() if p.poll() is not None and p.stderr else ''}"

    def probe(self, ns: str, targets: list[tuple[str, str, int]], timeout: float = 1.0) -> dict[str, str]:
        spec = {f"{proto} {host}:{port}": [proto, host, port] for proto, host, port in targets}
        out = self.ns(ns, sys.executable, "-c", PROBE, json.dumps(spec), str(timeout), timeout=30).stdout
        return json.loads(out)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)
        for ns in (self.client, self.router, self.target):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def aibox(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns(self.router, _binary(AIBOX_BIN), "egress", *args, check=check)


@pytest.fixture
def lab() -> Iterator[Lab]:
    _requirements(["ip", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"])
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def _normalize_save(text: str) -> list[str]:
    """iptables-save output without the timestamped header/footer comments and counters."""
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if line and not line.startswith("#")]


def _saved(lab: Lab) -> tuple[list[str], list[str]]:
    return (
        _normalize_save(lab.ns(lab.router, "iptables-save").stdout),
        _normalize_save(lab.ns(lab.router, "ip6tables-save").stdout),
    )


def _normalize_nft(text: str) -> list[str]:
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    return [line.strip() for line in text.splitlines() if line.strip()]


TARGETS = (
    [("tcp", h, 80) for h in BLOCKED_TCP + PUBLIC_TCP]
    + [("udp", "172.16.5.5", 53), ("tcp", "169.254.169.254", 53), ("udp", "fd00:ec2::254", 53), ("tcp", "fd00:ec2::254", 53)]
)
FROM_TARGET = [("tcp", CLIENT4, 7000), ("tcp", CLIENT6, 7000)]


def _all_open(lab: Lab) -> None:
    res = lab.probe(lab.client, TARGETS)
    res.update(lab.probe(lab.target, FROM_TARGET))
    assert {k: v for k, v in res.items() if v != "open"} == {}


def _filtered(lab: Lab) -> None:
    res = lab.probe(lab.client, TARGETS)
    want = {f"tcp {h}:80": "timeout" for h in BLOCKED_TCP}
    want |= {f"tcp {h}:80": "open" for h in PUBLIC_TCP}
    # DNS passes, to any address, over udp and tcp.
    want |= {
        "udp 172.16.5.5:53": "open",
        "tcp 169.254.169.254:53": "open",
        "udp fd00:ec2::254:53": "open",
        "tcp fd00:ec2::254:53": "open",
    }
    assert res == want
    # Replies to connections opened from outside pass (established), even
    # though the client's replies go to an RFC 1918 / ULA address.
    assert lab.probe(lab.target, FROM_TARGET) == {f"tcp {h}:7000": "open" for h in (CLIENT4, CLIENT6)}


def _docker_like(lab: Lab) -> None:
    """What Docker leaves: DOCKER-USER with an operator's rule, jumped to from FORWARD."""
    for tool, net in (("iptables", "10.99.0.0/24"), ("ip6tables", "fd99::/64")):
        lab.ns(lab.router, tool, "-N", "DOCKER-USER")
        lab.ns(lab.router, tool, "-A", "DOCKER-USER", "-s", net, "-j", "DROP")
        lab.ns(lab.router, tool, "-A", "FORWARD", "-j", "DOCKER-USER")


def _bare(lab: Lab) -> None:
    """A host without Docker whose filter tables already hold an unrelated rule."""
    for tool in ("iptables", "ip6tables"):
        lab.ns(lab.router, tool, "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT")


@pytest.mark.parametrize("setup", [_bare, _docker_like], ids=["no-docker", "docker"])
def test_iptables_apply_filters_and_remove_restores(lab: Lab, setup) -> None:
    setup(lab)
    before = _saved(lab)
    _all_open(lab)

    out = lab.aibox("apply", "--subnet", SUBNET4, "--subnet", SUBNET6).stdout
    assert "iptables: install 20 rules" in out or "iptables: install 19 rules" in out, out
    assert "ip6tables: install" in out, out
    applied = _saved(lab)
    v4 = [line for line in applied[0] if "aibox-egress" in line]
    if setup is _docker_like:
        assert not any("aibox-egress:jump" in line for line in v4), v4
        # Our rules come first in DOCKER-USER; the operator's rule stays, last.
        chain = [line for line in applied[0] if line.startswith("-A DOCKER-USER")]
        assert "aibox-egress:established" in chain[0]
        assert chain[-1] == "-A DOCKER-USER -s 10.99.0.0/24 -j DROP"
    else:
        assert any(line.startswith("-A FORWARD") and "aibox-egress:jump" in line for line in v4), v4
    _filtered(lab)

    # Idempotent: a second apply changes nothing.
    out = lab.aibox("apply", "--subnet", SUBNET4, "--subnet", SUBNET6).stdout
    assert out.count("nothing changed") == 2, out
    assert _saved(lab) == applied

    out = lab.aibox("remove").stdout
    assert "iptables: remove" in out and "ip6tables: remove" in out, out
    assert _saved(lab) == before
    _all_open(lab)

    out = lab.aibox("remove").stdout
    assert "iptables: no aibox-egress rules" in out, out
    assert _saved(lab) == before


def test_iptables_reapply_for_another_subnet_replaces(lab: Lab) -> None:
    _bare(lab)
    before = _saved(lab)
    lab.aibox("apply", "--subnet", "10.66.0.0/24")
    out = lab.aibox("apply", "--subnet", SUBNET4).stdout
    assert "replacing 20 earlier ones" in out, out
    v4 = _saved(lab)[0]
    assert not any("10.66.0.0/24" in line for line in v4), v4
    assert sum("aibox-egress" in line for line in v4) == 20
    _filtered_v4_only(lab)
    lab.aibox("remove")
    assert _saved(lab) == before


def _filtered_v4_only(lab: Lab) -> None:
    res = lab.probe(lab.client, [("tcp", "172.16.5.5", 80), ("tcp", "93.184.216.34", 80), ("udp", "172.16.5.5", 53)])
    assert res == {"tcp 172.16.5.5:80": "timeout", "tcp 93.184.216.34:80": "open", "udp 172.16.5.5:53": "open"}


def test_nftables_apply_filters_and_remove_restores(lab: Lab) -> None:
    _requirements(["nft"])
    # Someone else's table, which must survive untouched.
    lab.ns(lab.router, "nft", "-f", "-", input="table inet other {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 2222 accept\n\t}\n}\n")
    before = _normalize_nft(lab.ns(lab.router, "nft", "list", "ruleset").stdout)
    _all_open(lab)

    out = lab.aibox("apply", "--backend", "nftables", "--subnet", SUBNET4, "--subnet", SUBNET6).stdout
    assert "install table inet aibox_egress" in out, out
    applied = _normalize_nft(lab.ns(lab.router, "nft", "list", "ruleset").stdout)
    _filtered(lab)

    out = lab.aibox("apply", "--backend", "nftables", "--subnet", SUBNET4, "--subnet", SUBNET6).stdout
    assert "nothing changed" in out, out
    assert _normalize_nft(lab.ns(lab.router, "nft", "list", "ruleset").stdout) == applied

    out = lab.aibox("remove", "--backend", "nftables").stdout
    assert "delete table inet aibox_egress" in out, out
    assert _normalize_nft(lab.ns(lab.router, "nft", "list", "ruleset").stdout) == before
    _all_open(lab)


def test_dry_run_changes_nothing(lab: Lab) -> None:
    _bare(lab)
    before = _saved(lab)
    out = lab.aibox("apply", "--dry-run", "--subnet", SUBNET4).stdout
    assert "iptables-restore --noflush <<'EOF'" in out, out
    assert "-I DOCKER-USER 1 -s 10.77.0.0/24" in out, out
    assert _saved(lab) == before
    _all_open(lab)


# ----------------------------------------------------------------------------
# Without root: printing rules and the errors.


def _aibox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_binary(AIBOX_BIN), "egress", *args], capture_output=True, text=True, env=env, timeout=30)


def test_rules_print_the_seed_rules_and_nftables() -> None:
    res = _aibox("rules", "--subnet", "172.18.0.0/16")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    drops = [line for line in lines if line.startswith("iptables -I DOCKER-USER") and line.endswith("-j DROP")]
    # The seed's ranges are all there.
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"):
        assert any(f"-s 172.18.0.0/16 -d {net} " in line for line in drops), net
    assert any("--dport 53" in line and "-p udp" in line for line in lines)
    assert "table inet aibox_egress {" in res.stdout
    # `--dry-run` without a subcommand prints the same.
    assert _aibox("--dry-run", "--subnet", "172.18.0.0/16").stdout == res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["apply"], "no subnet: pass --subnet CIDR"),
        (["rules", "--subnet", "10.77.0.5/24"], "did you mean 10.77.0.0/24?"),
        (["rules", "--subnet", "0.0.0.0/0"], "every forwarded packet"),
        (["rules", "--subnet", "nonsense"], "not a CIDR range"),
    ],
)
def test_errors_name_the_fix(args: list[str], message: str) -> None:
    res = _aibox(*args)
    assert res.returncode == 2
    assert message in res.stderr, res.stderr


def test_docker_network_without_docker(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    res = _aibox("rules", "--docker-network", "ai-toolkit_frontend", env=env)
    assert res.returncode == 2
    assert "docker is not installed" in res.stderr and "--subnet CIDR" in res.stderr, res.stderr


def test_apply_without_root_says_run_as_root() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("iptables-save") is None:
        pytest.skip("needs root (to drop privileges) and setpriv and iptables")
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         _binary(AIBOX_BIN), "egress", "apply", "--subnet", SUBNET4],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 2, res
    assert "as root" in res.stderr, res.stderr
