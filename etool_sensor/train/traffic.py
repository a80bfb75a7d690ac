"""Capture real client/server traffic in two network namespaces, for self-supervised pretraining.

The labelled corpus is small and every capture in it comes from somebody else's network. Stage 1 of
ETooL wants plenty of unlabelled traffic; this makes more of it on any Linux box with root, from real
software only (no packet generator): curl, wget and openssl s_client against Python's TLS/HTTP servers and
openssl s_server, with keep-alive, parallel connections (BURSTs) and idle gaps, captured by dumpcap or
tcpdump on the client side of a veth pair. Nothing touches the host's own interfaces.

    sudo python -m etool_sensor.train.traffic --out captures/ [--seconds 120] [--seed 0]
    etool-sensor train ... --unlabelled ../shared/data --unlabelled captures/
    etool-sensor eval ... --unlabelled captures/      # SSL on the training flows plus these

Writes ``etool-loopback-<seed>.pcap`` and ``etool-loopback-<seed>.json`` (what ran, tool versions, counts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT_NS, SERVER_NS = "etool-cli", "etool-srv"
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
HOST = "etool.test"  # the name clients ask for (SNI, Host); masked before any model sees it
SIZES = (512, 4_096, 32_768, 262_144, 1_048_576)  # bytes of the files the servers offer


class CaptureError(RuntimeError):
    """The environment cannot run the capture (not root, a tool missing, namespaces in use)."""


def _run(*cmd: str, ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True, **kw)


def _require() -> dict[str, str]:
    """Tool paths, or CaptureError naming what is missing."""
    if os.geteuid() != 0:
        raise CaptureError("needs root (it creates network namespaces and captures on a veth)")
    tools = {t: shutil.which(t) for t in ("ip", "ethtool", "curl", "wget", "openssl")}
    tools["capture"] = shutil.which("dumpcap") or shutil.which("tcpdump")
    missing = [k for k, v in tools.items() if not v]
    if missing:
        raise CaptureError(f"missing tools: {', '.join(missing)} (capture = dumpcap or tcpdump)")
    existing = _run("ip", "netns", "list").stdout
    if CLIENT_NS in existing or SERVER_NS in existing:
        raise CaptureError(f"network namespace {CLIENT_NS} or {SERVER_NS} exists already (another run?)")
    probe = f"etool-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:  # root in a container without CAP_NET_ADMIN / CAP_SYS_ADMIN
        raise CaptureError(f"cannot create network namespaces: {made.stderr.strip()}")
    return tools  # type: ignore[return-value]


def _setup_netns() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        _run("ip", "netns", "add", ns)
    _run("ip", "link", "add", "etool-c", "netns", CLIENT_NS, "type", "veth", "peer", "name", "etool-s",
         "netns", SERVER_NS)
    for ns, dev, ip in ((CLIENT_NS, "etool-c", CLIENT_IP), (SERVER_NS, "etool-s", SERVER_IP)):
        _run("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
        _run("ip", "link", "set", dev, "up", ns=ns)
        _run("ip", "link", "set", "lo", "up", ns=ns)
        # as a real NIC shows them on the wire: without offloads a veth hands the capture 64 KB "packets" with
        # unfinished checksums
        _run("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", ns=ns)


def _teardown_netns() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        _run("ip", "netns", "del", ns, check=False)


def _make_site(root: Path, rng: random.Random) -> list[str]:
    paths = []
    for size in SIZES:
        name = f"f{size}.bin"
        (root / name).write_bytes(rng.randbytes(size))
        paths.append(name)
    (root / "index.html").write_text("<html><body>" + "etool " * 200 + "</body></html>")
    return paths + ["index.html"]


def _make_cert(d: Path) -> tuple[Path, Path]:
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return key, crt


SERVER_SCRIPT = r"""
import functools, http.server, socketserver, ssl, sys, threading
root, key, crt = sys.argv[1:4]
class T(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
H = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
H.func.protocol_version = "HTTP/1.1"   # keep-alive, as real servers do
H.func.log_message = lambda *a: None
plain = T(("0.0.0.0", 80), H)
tls = T(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(crt, key)
ctx.set_alpn_protocols(["http/1.1"])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
for s in (plain, tls):
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def _client_jobs(rng: random.Random, files: list[str], crt: Path) -> tuple[str, list[list[str]]]:
    """One client action: its kind and the commands started together (more than one = a BURST)."""
    url = lambda scheme, port, f: f"{scheme}://{HOST}:{port}/{f}"  # noqa: E731
    resolve = ["--resolve", f"{HOST}:443:{SERVER_IP}", "--resolve", f"{HOST}:80:{SERVER_IP}",
               "--resolve", f"{HOST}:8443:{SERVER_IP}"]
    curl = ["curl", "-s", "-o", "/dev/null", "--cacert", str(crt), *resolve]
    kind = rng.choice(("tls", "tls", "tls_keepalive", "burst", "tls12", "wget", "http", "s_client"))
    pick = lambda k=1: [rng.choice(files) for _ in range(k)]  # noqa: E731
    if kind == "tls":
        return kind, [curl + [url("https", 443, pick()[0])]]
    if kind == "tls_keepalive":  # several requests on one connection
        return kind, [curl + [url("https", 443, f) for f in pick(rng.randint(2, 5))]]
    if kind == "burst":  # a page with its resources: parallel connections within a second
        return kind, [curl + [url("https", 443, f)] for f in pick(rng.randint(2, 5))]
    if kind == "tls12":  # TLS 1.2 only, against openssl s_server
        return kind, [curl + ["--tls-max", "1.2", url("https", 8443, "")]]
    if kind == "wget":
        # wget has no --resolve: it connects to the address (no SNI) and sends the name in Host
        return kind, [["wget", "-q", "-O", "/dev/null", "--no-check-certificate", "--no-hsts",
                       f"--header=Host: {HOST}", f"https://{SERVER_IP}:443/{pick()[0]}"]]
    if kind == "http":
        return kind, [curl + [url("http", 80, pick()[0])]]
    return kind, [["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect {SERVER_IP}:8443 "
                         f"-servername {HOST} -CAfile {crt} -{rng.choice(('tls1_2', 'tls1_3'))} >/dev/null 2>&1"]]


def capture(out_dir: str | Path, seconds: float = 120.0, seed: int = 0, log=print) -> Path:
    """Run the workload for `seconds` and return the pcap path (see the module docstring)."""
    tools = _require()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pcap = out_dir / f"etool-loopback-{seed}.pcap"
    rng = random.Random(seed)
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="etool-capture-"))
    counts: dict[str, int] = {}
    try:
        _setup_netns()  # inside the try: a half-made setup is torn down too
        site = tmp / "site"
        site.mkdir()
        files = _make_site(site, rng)
        key, crt = _make_cert(tmp)
        srv = subprocess.Popen(["ip", "netns", "exec", SERVER_NS, sys.executable, "-c", SERVER_SCRIPT, str(site),
                                str(key), str(crt)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(srv)
        if srv.stdout is None or srv.stdout.readline().strip() != "ready":
            raise CaptureError("the HTTP/TLS server did not start")
        procs.append(subprocess.Popen(["ip", "netns", "exec", SERVER_NS, "openssl", "s_server", "-quiet", "-www",
                                       "-accept", "8443", "-cert", str(crt), "-key", str(key)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cap_cmd = ([tools["capture"], "-q", "-i", "etool-c", "-P", "-w", str(pcap)]
                   if tools["capture"].endswith("dumpcap") else
                   [tools["capture"], "-q", "-i", "etool-c", "-s", "0", "-w", str(pcap)])
        cap = subprocess.Popen(["ip", "netns", "exec", CLIENT_NS, *cap_cmd], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        procs.append(cap)
        time.sleep(1.5)  # servers listening, capture running
        if cap.poll() is not None:
            raise CaptureError(f"{' '.join(cap_cmd)} exited {cap.returncode}: "
                               f"{(cap.stderr.read() if cap.stderr else '').strip()[:300]}")
        t_end = time.monotonic() + seconds
        done = 0
        while time.monotonic() < t_end:
            kind, jobs = _client_jobs(rng, files, crt)
            counts[kind] = counts.get(kind, 0) + len(jobs)
            running = [subprocess.Popen(["ip", "netns", "exec", CLIENT_NS, *j], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for j in jobs]
            for p in running:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            done += len(jobs)
            if done % 50 < len(jobs):
                log(f"capture: {done} client connections, {max(0, t_end - time.monotonic()):.0f}s left")
            time.sleep(rng.choice((0.0, 0.05, 0.2, 0.5, 1.0, 2.5)))  # think time; > 1 s ends a BURST
        time.sleep(1.0)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
        _teardown_netns()
        shutil.rmtree(tmp, ignore_errors=True)
    if not pcap.is_file() or pcap.stat().st_size <= 24:
        raise CaptureError(f"the capture wrote no packets to {pcap}")
    versions = {t: (_run(t, "--version", check=False).stdout or "").splitlines()[:1] for t in ("curl", "wget")}
    versions["openssl"] = (_run("openssl", "version", check=False).stdout or "").splitlines()[:1]
    versions["python"] = [f"{sys.version.split()[0]} ({ssl.OPENSSL_VERSION})"]  # the TLS server's stack
    meta = {"pcap": pcap.name, "seconds": seconds, "seed": seed, "client_commands": counts,
            "server": f"{SERVER_IP} (Python http.server + ssl on 80/443, openssl s_server on 8443)",
            "client": CLIENT_IP, "host_name": HOST, "capture_tool": Path(tools["capture"]).name,
            "versions": {k: v[0] if v else "" for k, v in versions.items()},
            "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    pcap.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return pcap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the pcap and its JSON description")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0, help="workload choices and file contents")
    a = ap.parse_args(argv)
    try:
        p = capture(a.out, a.seconds, a.seed, log=lambda s: print(s, file=sys.stderr, flush=True))
    except CaptureError as e:
        print(f"etool capture: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"etool capture: error: {' '.join(e.cmd)}: {(e.stderr or '').strip()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the namespaces and servers are gone already (capture's finally)
        print("etool capture: interrupted; the pcap holds what was captured so far", file=sys.stderr)
        return 130
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
