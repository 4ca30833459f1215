"""One storage root per experiment: a local path or `s3://bucket/prefix`, through pyarrow.fs.

Every artifact of a run lives under `<root>/<experiment>/...`; callers use relative paths. Writes of
single files are atomic from a reader's view (temporary name, then move), and a stage publishes its
completion marker last (invariant 7).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
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
        """A URI usable by Ray (`storage_path`) and pyarrow: absolute path locally, s3://... else."""
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
        """Copy a local directory to rel (replacing it)."""
        self.delete(rel)
        if self.is_local:
            shutil.copytree(local_dir, self.path(rel))
        else:
            self.fs.create_dir(self.path(rel), recursive=True)
            pafs.copy_files(local_dir, self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def local_dir(self, rel: str, cache_dir: str) -> str:
        """A local directory holding rel: the path itself when local, else a downloaded copy."""
        if not self.exists(rel):
            raise StorageError(f"missing {self.uri(rel)}; rerun the stage that writes it")
        if self.is_local:
            return self.path(rel)
        dest = os.path.join(cache_dir, rel.replace("/", "__"))
        if not os.path.isdir(dest):
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            pafs.copy_files(self.path(rel), tmp, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            os.replace(tmp, dest)
        return dest

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def check_writable(self) -> None:
        """Fail fast (before any stage) when the root cannot be written."""
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete("_probe")
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"storage root {self.uri()} is not writable: {e}") from None
