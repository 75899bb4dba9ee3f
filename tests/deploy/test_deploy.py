"""deploy/: the nginx load balancer for real (two RAPL servers on FakeBackends, one stopped mid-way),
and the service files parsed or verified by the tools that read them."""

from __future__ import annotations

import configparser
import os
import plistlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from support import ROOT, processes
from support.fake_backend import FakeBackend, say
from support.net import free_port
from support.server import Server
from support.speech import tone, wav_bytes

DEPLOY = ROOT / "deploy"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


def nginx_binary() -> str:
    exe = shutil.which("nginx", path=SBIN)
    if exe is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return exe


def nginx_main_conf(nginx: str, tmp: Path, include: Path) -> Path:
    """A whole nginx.conf for a test run: everything under ``tmp``, ``include`` in http{}."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    temp_paths = [f"client_body_temp_path {tmp}/body;", f"proxy_temp_path {tmp}/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):  # only the modules compiled in know their directive
        if f"--http-{module}-temp-path" in built:
            temp_paths.append(f"{module}_temp_path {tmp}/{module};")
    conf = tmp / "nginx.conf"
    conf.write_text("worker_processes 1;\n"
                    "events { worker_connections 128; }\n"
                    "http {\n"
                    f"    access_log {tmp}/access.log;\n"
                    + "".join(f"    {line}\n" for line in temp_paths)
                    + f"    include {include};\n"
                    "}\n")
    return conf


@pytest.fixture()
def nginx_run(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Factory: run nginx on a site config (text for the http context); returns its base URL."""
    nginx = nginx_binary()
    procs: list[subprocess.Popen[bytes]] = []

    def start(site: str) -> str:
        port = free_port()
        site = re.sub(r"listen\s+127\.0\.0\.1:8000;", f"listen 127.0.0.1:{port};", site)
        (tmp_path / "site.conf").write_text(site)
        conf = nginx_main_conf(nginx, tmp_path, tmp_path / "site.conf")
        # master_process off: one process, as whoever runs the tests (no switch to nobody, who
        # could not write the temporary files under tmp_path).
        globals_ = f"daemon off; master_process off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"
        test = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", globals_],
                              capture_output=True, text=True)
        assert test.returncode == 0, test.stderr
        procs.append(processes.start([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", globals_]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert procs[-1].poll() is None, (tmp_path / "error.log").read_text()
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen on {port}: {(tmp_path / 'error.log').read_text()}")

    try:
        yield start
    finally:
        for proc in procs:
            processes.stop(proc, timeout=10)  # SIGTERM; killed if it does not exit
            processes.kill(proc)


def stop(server: Server) -> None:
    """Stop ``server`` as the end of its process would: its open connections go too.

    Server.close() closes only the listening socket; the keep-alive connections nginx holds
    to it would go on reaching the app after its model thread stopped (and get 500s).
    """
    from waitress.channel import HTTPChannel

    dropped = threading.Event()

    def drop() -> None:  # runs in waitress's own loop thread
        for channel in list(server._server._map.values()):
            if isinstance(channel, HTTPChannel):
                channel.handle_close()
        dropped.set()

    server._server.trigger.pull_trigger(drop)
    assert dropped.wait(10)
    server.close()


def test_nginx_balances_two_instances_and_skips_a_stopped_one(fake_serve, nginx_run: Callable[[str], str]) -> None:  # noqa: ANN001
    nginx_binary()
    clip = wav_bytes(tone(4.0))
    first = fake_serve(FakeBackend())
    second = fake_serve(FakeBackend())
    assert first.worker.state == second.worker.state == "ready"
    site = (DEPLOY / "nginx" / "rapl-lb.conf").read_text()
    assert "server 127.0.0.1:8001 " in site and "server 127.0.0.1:8002 " in site
    site = site.replace("127.0.0.1:8001", first.url.removeprefix("http://"))
    site = site.replace("127.0.0.1:8002", second.url.removeprefix("http://"))
    url = nginx_run(site)

    def transcribe(http: httpx.Client) -> httpx.Response:
        return http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", clip)},
                         data={"response_format": "json"})

    with httpx.Client(base_url=url, timeout=120) as http:
        answers = [transcribe(http) for _ in range(10)]
        assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
        assert all(r.json()["text"] == say(4.0) for r in answers)
        served = (len(first.backend.calls), len(second.backend.calls))
        assert sum(served) == 10 and min(served) >= 2, served  # both instances took their share

        stop(first)  # one instance goes away: nginx must pass its requests to the other
        still = len(second.backend.calls)
        after = [transcribe(http) for _ in range(6)]
        assert [r.status_code for r in after] == [200] * 6, [r.text for r in after]
        assert len(second.backend.calls) - still == 6
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ready"


def test_nginx_skips_an_instance_that_answers_503(fake_serve, nginx_run: Callable[[str], str]) -> None:  # noqa: ANN001
    """An instance whose model is not ready answers 503; nginx passes the request on."""
    nginx_binary()
    broken = fake_serve(FakeBackend("rapl-test/no-such-model", fail_load=OSError("Connection failed")))
    good = fake_serve(FakeBackend())
    assert broken.worker.state == "failed" and good.worker.state == "ready"
    site = (DEPLOY / "nginx" / "rapl-lb.conf").read_text()
    site = site.replace("127.0.0.1:8001", broken.url.removeprefix("http://"))
    site = site.replace("127.0.0.1:8002", good.url.removeprefix("http://"))
    url = nginx_run(site)
    with httpx.Client(base_url=url, timeout=60) as http:
        statuses = [http.get("/health").status_code for _ in range(6)]
    assert statuses == [200] * 6
    with broken.http() as http:
        assert http.get("/health").status_code == 503  # it was asked, and passed over


def test_tls_snippet_passes_nginx_t(tmp_path: Path) -> None:
    nginx = nginx_binary()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=rapl.example.com", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    site = (DEPLOY / "nginx" / "rapl-tls.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/rapl.example.com/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/rapl.example.com/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    conf = nginx_main_conf(nginx, tmp_path, tmp_path / "site.conf")
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g",
                           f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "client_max_body_size 25m;" in site and "proxy_buffering off;" in site


def test_lb_config_has_the_directives_that_matter() -> None:
    site = (DEPLOY / "nginx" / "rapl-lb.conf").read_text()
    live = "\n".join(line.split("#", 1)[0] for line in site.splitlines())
    for directive in ("proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;",
                      "client_max_body_size 25m;", "proxy_buffering off;", "proxy_request_buffering on;",
                      "proxy_pass http://rapl;"):
        assert directive in live, directive


def test_launch_agent_plist_parses() -> None:
    with (DEPLOY / "macos" / "com.rapl.server.plist").open("rb") as f:
        agent = plistlib.load(f)
    assert agent["Label"] == "com.rapl.server"
    assert agent["ProgramArguments"][1:] == ["-m", "rapl"]
    assert agent["ProgramArguments"][0].startswith(agent["WorkingDirectory"])
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] is True
    assert agent["StandardOutPath"].endswith("/Library/Logs/rapl.log")
    assert agent["StandardErrorPath"] == agent["StandardOutPath"]
    if shutil.which("plutil"):
        subprocess.run(["plutil", "-lint", str(DEPLOY / "macos" / "com.rapl.server.plist")], check=True)


def test_systemd_unit_parses() -> None:
    unit = configparser.RawConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "linux" / "rapl.service")
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Service"]["ExecStart"].endswith(" -m rapl")
    assert unit["Service"]["WorkingDirectory"] == "%h/rapl"
    assert unit["Service"]["ExecStart"].startswith("%h/rapl/")
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "default.target"


def test_systemd_unit_verifies_as_shipped(tmp_path: Path) -> None:
    """`systemd-analyze --user verify` with HOME holding rapl/.venv/bin/python, as the unit expects."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    home, runtime = tmp_path / "home", tmp_path / "run"
    (home / "rapl" / ".venv" / "bin").mkdir(parents=True)
    (home / "rapl" / ".venv" / "bin" / "python").symlink_to(sys.executable)
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "rapl.service"
    shutil.copy(DEPLOY / "linux" / "rapl.service", unit)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    proc = subprocess.run([exe, "--user", "verify", str(unit)], env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "Failed to initialize manager" in proc.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "rapl.service" not in proc.stderr, proc.stderr  # warnings (unknown keys, bad values) name the file


def test_caddyfile_validates() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (apt-get install caddy)")
    proc = subprocess.run([caddy, "validate", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Valid configuration" in proc.stdout + proc.stderr


def test_windows_task_script() -> None:
    script = (DEPLOY / "windows" / "install-task.ps1").read_text()
    assert "Register-ScheduledTask" in script and "New-ScheduledTaskTrigger -AtLogOn" in script
    assert "-m rapl" in script and "schtasks /Create" in script
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("PowerShell (pwsh) is not installed: the script was only read, not parsed")
    check = ("$errors = $null; [System.Management.Automation.Language.Parser]::ParseFile("
             f"'{DEPLOY / 'windows' / 'install-task.ps1'}', [ref]$null, [ref]$errors) | Out-Null; "
             "if ($errors) { $errors | ForEach-Object { Write-Error $_.Message }; exit 1 }")
    subprocess.run([pwsh, "-NoProfile", "-Command", check], check=True)
