# mypy: allow-untyped-calls
"""Pickling straight into Metaflow's content-addressed store, without a copy of large buffers.

Pickling a 40 MB array to bytes copies it; hashing and writing those bytes then reads them
twice more. Here the pickler writes into :class:`_BlobFile`: small pieces are gathered in
memory, large buffers (numpy arrays arrive as zero-copy ``PickleBuffer``) are hashed and written
to a temporary file at the same time, and the file is renamed to its sha1 key at the end — the
layout ``ContentAddressedStore.save_blobs(raw=True)`` writes, read back by its ``load_blobs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
from metaflow.datastore.content_addressed_store import ContentAddressedStore

from fedloom.checkpoint.artifacts import PROTOCOL, Artifact, StoredBlob

LARGE = 1 << 20  # a pickle smaller than this stays in memory and goes with its task's files
RAW_META = {"cas_raw": True, "cas_version": 1}  # what save_blobs(raw=True) records per blob


class StreamingCas:
    """An :class:`~fedloom.checkpoint.artifacts.ArtifactSink` over one flow's blob store.
    Thread-safe: every blob has its own temporary file."""

    def __init__(self, ca_store: ContentAddressedStore) -> None:
        self._storage = ca_store._storage_impl  # Metaflow's layout: <prefix>/<key[:2]>/<key>
        self._prefix = ca_store._prefix
        self._root = self._storage.full_uri(self._prefix)
        # sha1 releases the GIL: it runs beside the write of the same buffer.
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedloom-sha1")

    def pickle(self, value: Any) -> Artifact:
        blob = _BlobFile(self._root, self._hasher)
        try:
            cloudpickle.Pickler(blob, protocol=PROTOCOL).dump(value)
            return blob.finish(self._path_of)
        except BaseException:
            blob.discard()
            raise

    def close(self) -> None:
        self._hasher.shutdown(wait=True)

    def _path_of(self, key: str) -> str:
        path: str = self._storage.full_uri(self._storage.path_join(self._prefix, key[:2], key))
        return path


class _BlobFile:
    """The file-like object a pickler writes one blob into."""

    def __init__(self, root: str, hasher: ThreadPoolExecutor) -> None:
        self._root = root
        self._hasher = hasher
        self._sha = hashlib.sha1()
        self._head = bytearray()
        self._file: Any = None  # opened at the first large buffer
        self._tmp = ""
        self.size = 0

    def write(self, data: Any) -> int:
        view = data.raw() if isinstance(data, pickle.PickleBuffer) else memoryview(data).cast("B")
        size = view.nbytes
        self.size += size
        if self._file is None and len(self._head) + size < LARGE:
            self._head += view
            return size
        if self._file is None:
            os.makedirs(self._root, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(dir=self._root, prefix=".fedloom-blob-")
            self._file = os.fdopen(fd, "wb", buffering=0)
        if self._head:
            self._put(memoryview(self._head))
            self._head = bytearray()
        if size >= LARGE:
            self._put(view)
        else:
            self._head += view
        return size

    def _put(self, view: memoryview) -> None:
        hashed = self._hasher.submit(self._sha.update, view)
        written = 0
        while written < view.nbytes:  # a raw write may be partial
            written += self._file.write(view[written:])
        hashed.result()

    def finish(self, path_of: Any) -> Artifact:
        """The pickle's bytes when small, else the key it is stored under."""
        if self._file is None:
            return bytes(self._head)
        if self._head:
            self._put(memoryview(self._head))
        self._file.close()
        key = self._sha.hexdigest()
        path = path_of(key)
        if os.path.exists(path):  # the same bytes are stored already (unchanged state)
            self._hasher.submit(os.unlink, self._tmp)  # dropping 40 MB of page cache takes ms
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # The marker first: a blob without it would be read as gzip-packed.
            _atomic_write(f"{path}_meta", json.dumps(RAW_META).encode())
            os.replace(self._tmp, path)
        return StoredBlob(key, self.size)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".fedloom-meta-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
