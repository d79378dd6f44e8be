"""What hostile requests cost the daemon: a 500,000-item verify, deep JSON, and slow-loris connections.

    .venv/bin/python bench/hostile_requests.py [--items 500000] [--loris 20]

Starts the daemon as a real process (``python -m provider serve``, no Slurm needed: every request
here is refused before Slurm is asked) and reports, for each hostile request, the answer, the wall
time, and the daemon's peak RSS (VmHWM) before and after; for slow clients, how long the daemon kept
each connection open. Compare with the same script on an older commit; these machines are shared and
noisy, so read the figures as orders of magnitude.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provider.ucloud.devcore import DevCoreKeys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return resp.status, text, time.monotonic() - started
    finally:
        conn.close()


def open_time(port: int, send: bytes, drip: bytes, interval: float, limit: float) -> float:
    """Send ``send``, then one byte of ``drip`` every ``interval`` s; seconds until the daemon closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(interval)
    started = time.monotonic()
    try:
        sock.sendall(send)
        for byte in drip:
            if time.monotonic() - started > limit:
                return float("inf")
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            sock.sendall(bytes([byte]))
        while time.monotonic() - started <= limit:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
        return float("inf")
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--loris", type=int, default=20, help="slow connections of each kind")
    parser.add_argument("--limit", type=float, default=90, help="seconds to wait for a slow connection to be cut")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    keys = DevCoreKeys.load_or_create(work / "keys")
    port = free_port()
    config = work / "provider.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[ucloud]
url = "http://127.0.0.1:{free_port()}"
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
[slurm]
backend = "cli"
conf = "/nonexistent/slurm.conf"
query_timeout = 2
[store]
path = "{work / 'provider.sqlite3'}"
[jobs]
directory = "{work / 'jobs'}"
[reconcile]
interval = 3600
[logging]
format = "json"
"""
    )
    log = (work / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "provider", "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"the daemon did not start; see {work / 'daemon.log'}") from None
                time.sleep(0.2)
        auth = {"Authorization": f"Bearer {keys.service_token()}"}
        verify = "/ucloud/slurm/jobs/verify"
        print(f"daemon pid {daemon.pid}, port {port}, peak RSS at start {vm_hwm_mb(daemon.pid):.0f} MB")

        def report(name: str, result: tuple[int, str, float]) -> None:
            status, text, seconds = result
            why = text[:100].replace("\n", " ")
            print(f"{name:<34} {status}  {seconds:6.2f} s  peak RSS {vm_hwm_mb(daemon.pid):5.0f} MB  {why}")

        items = b'{"items":[' + b",".join([b"1"] * args.items) + b"]}"
        report(f"verify of {args.items:,} items ({len(items) / 1e6:.1f} MB)", post(port, verify, items, auth))
        deep = b'{"items":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        report("200,000-deep JSON", post(port, verify, deep, auth))
        report("bad gzip body", post(port, verify, b"\x1f\x8bnot gzip at all", {**auth, "Content-Encoding": "gzip"}))
        bomb = gzip.compress(b"[" + b"1," * 50_000_000 + b"1]", 9)
        report(f"gzip bomb ({len(bomb) / 1e3:.0f} kB -> 100 MB)", post(port, verify, bomb, {**auth, "Content-Encoding": "gzip"}))
        report("lone surrogate", post(port, verify, b'{"items":[{"id":"\\ud800"}]}', auth))
        nul = base64.b64encode(b"user\x00name").decode()
        report("NUL in ucloud-username", post(port, "/ucloud/slurm/jobs", b'{"items":[]}', {**auth, "ucloud-username": nul}))

        head = b"POST " + verify.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        kinds = {
            "idle (no bytes)": (b"", b""),
            "slow headers (1 byte/s)": (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 10_000),
            "slow body (1 byte/s)": (
                head + f"Authorization: Bearer {keys.service_token()}\r\nContent-Length: 100000\r\n\r\n".encode(),
                b"{" * 100_000,
            ),
        }
        for name, (send, drip) in kinds.items():
            times: list[float] = []
            threads = [
                threading.Thread(target=lambda t=times, s=send, d=drip: t.append(open_time(port, s, d, 1.0, args.limit)))
                for _ in range(args.loris)
            ]
            for t in threads:
                t.start()
            time.sleep(2)
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/healthz")
                healthz = f"{conn.getresponse().status} in {(time.monotonic() - started) * 1000:.0f} ms"
            except OSError as exc:
                healthz = f"failed: {exc!r}"
            finally:
                conn.close()
            for t in threads:
                t.join()
            cut = sorted(times)
            shown = "never (still open)" if cut[-1] == float("inf") else f"{cut[0]:.1f}-{cut[-1]:.1f} s"
            print(f"{args.loris} x {name:<26} cut off after {shown} (limit {args.limit:.0f} s); /healthz meanwhile: {healthz}")
        text = (work / "daemon.log").read_text()
        print(f"tracebacks in the daemon's log: {text.count('Traceback')}; http.unhandled_error: {text.count('http.unhandled_error')}")
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
