"""An S3-compatible server on loopback (moto's), so `dvc push`/`dvc pull` can be tried without AWS.

`loraloop s3-local start` starts it and points an untracked local remote (.dvc/config.local) at
it; `loraloop s3-local stop` stops it. The tests use the same functions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

HOST = "127.0.0.1"
# moto accepts any key; these are placeholders, not secrets.
ACCESS_KEY = "loraloop-local"
SECRET_KEY = "loraloop-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path | None = None) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise RuntimeError("moto_server is not installed: run `make install` (it installs the test extras)")
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(exe), "-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not listen on {HOST}:{port} within 30 s")


def endpoint(port: int) -> str:
    return f"http://{HOST}:{port}"


def make_bucket(port: int, bucket: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint(port),
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)


def configure_remote(repo: Path, port: int, bucket: str, name: str = "loopback") -> None:
    """A default remote in .dvc/config.local (untracked), so tracked config keeps the real S3 remote."""

    def dvc(*args):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True, text=True)

    dvc("remote", "add", "--local", "--force", "--default", name, f"s3://{bucket}/store")
    dvc("remote", "modify", "--local", name, "endpointurl", endpoint(port))
    dvc("remote", "modify", "--local", name, "access_key_id", ACCESS_KEY)
    dvc("remote", "modify", "--local", name, "secret_access_key", SECRET_KEY)


PID_FILE = Path(".dvc/tmp/s3-local.pid")


def start(port: int, bucket: str) -> str:
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    stop()
    proc = start_server(port, log=PID_FILE.with_suffix(".log"))
    make_bucket(port, bucket)
    configure_remote(Path.cwd(), port, bucket)
    PID_FILE.write_text(str(proc.pid))
    return endpoint(port)


def stop() -> bool:
    if not PID_FILE.is_file():
        return False
    try:
        os.killpg(int(PID_FILE.read_text()), signal.SIGTERM)
    except (ProcessLookupError, ValueError):
        pass
    PID_FILE.unlink()
    return True


@click.group("s3-local")
def cli():
    """An S3 server on loopback (moto) as this project's DVC remote, to try push/pull without AWS."""


@cli.command("start")
@click.option("--port", default=5555, show_default=True)
@click.option("--bucket", default="loraloop-artifacts", show_default=True)
def start_command(port, bucket):
    """Start the server and make it the default remote in .dvc/config.local (untracked)."""
    url = start(port, bucket)
    click.echo(
        f"S3 on {url}, bucket {bucket}; remote 'loopback' is the default in .dvc/config.local.\n"
        "Try: dvc push && dvc pull.  Stop: loraloop s3-local stop "
        "(then `dvc remote default --local --unset` to go back to the tracked remote)"
    )


@cli.command("stop")
def stop_command():
    """Stop the loopback S3 server (its contents are in memory and are lost)."""
    click.echo("stopped" if stop() else "not running")
