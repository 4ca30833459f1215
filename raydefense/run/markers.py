"""Completion markers (invariant 7): `<prefix>/_COMPLETE.json` holds a fingerprint and a manifest
of the published files, is written last, and is dropped before anything is rewritten."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from raydefense.storage import Storage

log = logging.getLogger("raydefense")


def is_complete(storage: Storage, rel_marker: str, fingerprint: str) -> bool:
    """True when the marker exists, matches the fingerprint, and every file its manifest lists
    is still there with the size it had when the stage completed."""
    if not storage.exists(rel_marker):
        return False
    marker = storage.read_json(rel_marker)
    if marker.get("fingerprint") != fingerprint:
        return False
    bad = storage.verify_manifest(marker.get("manifest", {}))
    if bad:
        log.warning(
            "%s: %d published file(s) are missing or changed (%s); redoing it",
            rel_marker.rsplit("/", 1)[0],
            len(bad),
            bad[0],
        )
        return False
    return True


def mark_complete(
    storage: Storage,
    rel_marker: str,
    fingerprint: str,
    outputs: dict[str, Any],
    prefixes: tuple[str, ...] = (),
    manifest: Optional[dict[str, Any]] = None,
) -> None:
    """Publish a completion marker (last, after every output): the fingerprint, a summary of the
    outputs, and a manifest {path: {bytes, sha256[, rows]}} of the files under `prefixes`."""
    files = dict(manifest or {})
    for p in prefixes:
        files.update(storage.manifest(p))
    storage.write_json(
        rel_marker,
        {
            "fingerprint": fingerprint,
            "completed_at": time.time(),
            "outputs": outputs,
            "manifest": files,
        },
    )


def unpublish(storage: Storage, rel_marker: str) -> None:
    """Drop a marker before its outputs are rewritten, so an interrupted rewrite (say under
    --force) is never mistaken for a complete stage."""
    storage.delete(rel_marker)
