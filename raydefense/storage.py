"""One storage root per experiment: a local path or `s3://bucket/prefix`, through pyarrow.fs.

Every artifact of a run lives under `<root>/<experiment>/...`; callers use relative paths.

S3: the endpoint and credentials come only from the environment / the standard AWS chain
(`AWS_ENDPOINT_URL` points pyarrow, boto3, Ray and MLflow at an S3-compatible server). A root
that embeds credentials (`s3://KEY:SECRET@bucket`) is refused, so secrets never reach configs,
MLflow params or logs.

Atomicity from a reader's view (invariant 7):
- a single file is written under a temporary name and then moved;
- a directory is written under a staging prefix and published file by file (`publish_dir`);
- a stage publishes its completion marker, with a manifest of its files (size, sha256, Parquet
  row count), last; `verify_manifest` tells a rerun whether those files are still intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydefense.errors import StorageError


class Storage:
    """Files under `<root>/<experiment>`, addressed by '/'-separated relative paths."""

    def __init__(self, root: str, experiment: str) -> None:
        self.root_uri = root
        self.experiment = experiment
        check_root_uri(root)
        if "://" in root:
            try:
                self.fs, base = pafs.FileSystem.from_uri(root)
            except (pa.ArrowInvalid, OSError) as e:
                raise StorageError(f"storage.root {root!r} is not usable: {e}") from None
            self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
            self.is_local = True
        self.base = f"{base.rstrip('/')}/{experiment}"

    # -- paths
    def path(self, rel: str = "") -> str:
        """Filesystem path (no scheme) of a relative path."""
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def uri(self, rel: str = "") -> str:
        """A URI usable by Ray (`storage_path`) and pyarrow: an absolute path locally, else
        s3://..."""
        if self.is_local:
            return self.path(rel)
        scheme = self.root_uri.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}"

    # -- queries
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel)))
        return sorted(i.base_name for i in infos)

    def experiments(self) -> list[str]:
        """Every experiment directory under this storage's root (this one included), sorted."""
        root = self.base.rsplit("/", 1)[0]
        if self.fs.get_file_info(root).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(root))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # -- bytes / json / tables
    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, target)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"missing {self.uri(rel)}; rerun the stage that writes it") from None

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(rel):
            raise StorageError(f"missing {self.uri(rel)}; rerun the stage that writes it")
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    # -- directories
    def upload_dir(self, local_dir: str, rel: str) -> None:
        """Copy a local directory to rel (replacing it), staged and then published."""
        with self.staging(rel) as staging:
            if self.is_local:
                shutil.copytree(local_dir, self.path(staging))
            else:
                self.fs.create_dir(self.path(staging), recursive=True)
                pafs.copy_files(
                    local_dir,
                    self.path(staging),
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=self.fs,
                )
            self.publish_dir(staging, rel)

    def local_dir(self, rel: str, cache_dir: str) -> str:
        """A local directory holding rel: the path itself when local, else a downloaded copy."""
        if not self.exists(rel):
            raise StorageError(f"missing {self.uri(rel)}; rerun the stage that writes it")
        if self.is_local:
            return self.path(rel)
        dest = os.path.join(cache_dir, rel.replace("/", "__"))
        if not os.path.isdir(dest):
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            pafs.copy_files(
                self.path(rel),
                tmp,
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            os.replace(tmp, dest)
        return dest

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    # -- staged directories and manifests
    @contextmanager
    def staging(self, rel: str) -> Iterator[str]:
        """A fresh staging prefix next to rel (`<rel>.staging-<id>`), removed on failure.

        Write a directory's files there, then `publish_dir(staging, rel)`.
        """
        staging = f"{rel}.staging-{uuid.uuid4().hex[:8]}"
        try:
            yield staging
        except BaseException:
            self.delete(staging)
            raise

    def publish_dir(self, staging: str, rel: str) -> None:
        """Replace rel by the complete files of `staging` (moved file by file, then removed).

        On S3 a move is a server-side copy; readers never see a half-written file, and a
        crash mid-publish leaves rel without its stage marker, so a rerun redoes the stage.
        """
        self.delete(rel)
        for f in self.files(staging):
            target = self.path(f"{rel}/{f}")
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            self.fs.move(self.path(f"{staging}/{f}"), target)
        self.delete(staging)

    def files(self, rel: str) -> list[str]:
        """Relative paths of every file under rel (recursive, sorted); [] when rel is absent."""
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.File:
            return [""]
        if info.type != pafs.FileType.Directory:
            return []
        base = self.path(rel).rstrip("/") + "/"
        sel = pafs.FileSelector(self.path(rel), recursive=True)
        return sorted(
            i.path[len(base) :] for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File
        )

    def manifest(self, rel: str, exclude: tuple[str, ...] = ("_COMPLETE.json",)) -> dict[str, dict]:
        """{path relative to the root: {bytes, sha256[, rows]}} of every file under rel."""
        out: dict[str, dict] = {}
        for f in self.files(rel):
            if os.path.basename(f) in exclude or ".tmp-" in f or ".staging-" in f:
                continue
            full = f"{rel}/{f}" if f else rel
            data = self.read_bytes(full)
            entry: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if full.endswith(".parquet"):
                entry["rows"] = pq.read_metadata(pa.BufferReader(data)).num_rows
            out[full] = entry
        return out

    def verify_manifest(self, manifest: dict[str, dict]) -> list[str]:
        """Paths of a manifest that are missing or changed size (a cheap listing, no reads)."""
        bad = []
        for rel, entry in manifest.items():
            info = self.fs.get_file_info(self.path(rel))
            if info.type != pafs.FileType.File or info.size != entry["bytes"]:
                bad.append(rel)
        return bad

    def check_writable(self) -> None:
        """Fail fast (before any stage) when the root cannot be reached or written: a missing
        bucket, rejected credentials or an unreachable endpoint each get their own message."""
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            if self.read_bytes(probe) != b"ok":
                raise OSError("a probe file read back different bytes")
            self.delete("_probe")
        except (OSError, pa.ArrowException, StorageError) as e:
            raise StorageError(explain_storage_error(self.uri(), e)) from None


_CREDENTIALS_IN_URI = re.compile(r"^[a-z0-9+.-]+://[^/@]*@", re.IGNORECASE)


def check_root_uri(root: str) -> None:
    """Refuse roots that would carry secrets into configs, MLflow params and logs."""
    if _CREDENTIALS_IN_URI.match(root) or re.search(
        r"[?&](access_key|secret_key|session_token)=", root
    ):
        raise StorageError(
            "storage.root must not contain credentials; set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (or an AWS profile or role) in the environment"
        )


def explain_storage_error(uri: str, e: BaseException) -> str:
    """One line naming the problem and the fix (never the secret: it is scrubbed if echoed)."""
    msg = " ".join(str(e).split())
    low = msg.lower()
    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "AWS (no AWS_ENDPOINT_URL set)"
    )
    if uri.startswith("s3://"):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        if (
            "network_connection" in low
            or "could not connect" in low
            or "could not resolve" in low
            or "timed out" in low
            or "timeout" in low
        ):
            hint = (
                f"cannot reach the S3 endpoint {endpoint}; check AWS_ENDPOINT_URL and that the "
                "server is up"
            )
        elif "not found" in low and "bucket" in low or "nosuchbucket" in low:
            hint = (
                f"bucket {bucket!r} does not exist at {endpoint}; create it (for example "
                f"`aws s3 mb s3://{bucket}`) or fix storage.root"
            )
        elif any(
            k in low
            for k in (
                "signature",
                "access_key",
                "accesskey",
                "access denied",
                "access_denied",
                "forbidden",
                "credentials",
                "403",
            )
        ):
            hint = (
                f"S3 at {endpoint} rejected the credentials for bucket {bucket!r}; set "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile/role) with write "
                "access"
            )
        else:
            hint = "S3 refused a test write"
    else:
        hint = "cannot write a test file there; fix the path or its permissions"
    return _scrub(f"storage root {uri} is not usable: {hint} ({msg[:300]})")


def _scrub(text: str) -> str:
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
