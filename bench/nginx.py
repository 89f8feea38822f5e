"""The reference hop: nginx ``proxy_pass`` in front of the same upstream, measured in the same run as the gateway.

One nginx process (``master_process off``, one worker's work in one process, so its CPU is read from one pid) on
the gateway's CPU, with a keep-alive pool to the upstream (``keepalive``, HTTP/1.1), an access line per request
written to a file (the gateway writes one too), and ``proxy_buffering off`` so streams are relayed as they come, as
the gateway relays them. Every scenario's direct call goes through it; the gateway's CPU per request divided by
nginx's is the scenario's ratio to the nginx hop.

nginx comes from the distribution (``apt-get install nginx``, done here when it is missing and the benchmark runs
as root with apt-get); without it the ratios are left out and the run says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from processes import BenchError, Processes

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    client_max_body_size 4m;
    upstream up {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx's path; installed from the distribution's packages when missing and this runs as root with apt-get."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    print("nginx is not installed: installing it from the distribution's packages (apt-get install nginx)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
        if subprocess.run(argv, env=env, capture_output=True, timeout=600).returncode != 0:
            return None
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_nginx(
    procs: Processes,
    binary: str,
    tmp: Path,
    upstream_url: str,
    cpus: set[int] | None,
    wrapper: tuple[str, ...] = (),
    wait: float = 10.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start nginx in front of ``upstream_url`` (under ``wrapper``, a command such as valgrind, when given);
    return the process and nginx's base URL."""
    port = free_port()
    upstream = upstream_url.split("://", 1)[1]
    path = tmp / "nginx.conf"
    path.write_text(CONFIG.format(tmp=tmp, upstream=upstream, port=port))
    log = procs.log(tmp / "nginx-stderr.log")
    proc = procs.start([*wrapper, binary, "-c", str(path), "-p", str(tmp)], cpus, stdout=log, stderr=log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            error = (tmp / "nginx-error.log").read_text(errors="replace") if (tmp / "nginx-error.log").exists() else ""
            raise BenchError(f"nginx exited (status {proc.returncode}): {error[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nginx did not listen within {wait:g} s")


def nginx_version() -> str:
    binary = find_nginx()
    if binary is None:
        return "?"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().rsplit("/", 1)[-1] or "?"
