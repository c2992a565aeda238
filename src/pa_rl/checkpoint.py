"""Training checkpoints that survive SIGKILL: atomic, self-verifying files, the newest K kept.

A checkpoint file is one header line ``pa-rl-checkpoint <format> <sha256 of the payload>`` then
the payload, a ``torch.save`` of plain tensors, numbers and strings (loaded with
``weights_only=True``, so a checkpoint cannot run code). It is written to a temporary file,
fsynced and renamed into place, so a reader sees a whole checkpoint or none; the checksum catches
files damaged afterwards (a full disk, a bad copy). Corrupt files are skipped, with a message,
in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 2  # 2 (0.5.0): the offline policy-sample cache replaces its RNG state; hf policies save adapters only
MAGIC = b"pa-rl-checkpoint"
NAME = re.compile(r"^ckpt-(\d{6})\.pt$")
log = logging.getLogger("pa_rl")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, or written by another config or version."""


class WriteError(OSError):
    """A file could not be written (a full disk, a lost mount); what was on disk before stays intact."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file, fsync it, rename it over ``path`` and fsync the folder:
    readers never see half a file, and a completed rename survives a power cut. A failed write
    (``WriteError``, naming ``path``) removes its temporary file and leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {path} ({error.strerror or error}); the files written before it, "
                         "the last good checkpoint among them, are intact") from error
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return b"%s %d %s\n" % (MAGIC, FORMAT, hashlib.sha256(payload).hexdigest().encode()) + payload


def decode(blob: bytes, source: str) -> dict[str, Any]:
    """Verify the header and checksum, then unpickle tensors and plain values only."""
    header, _, payload = blob.partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise CheckpointError(f"{source} is not a pa-rl checkpoint (bad header)")
    if int(parts[1]) != FORMAT:
        raise CheckpointError(f"{source} has checkpoint format {int(parts[1])}; this pa-rl reads format {FORMAT}")
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise CheckpointError(f"{source} is damaged: its checksum does not match (truncated or overwritten)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own message would suggest the unsafe weights_only=False
        raise CheckpointError(f"{source} holds objects other than tensors and plain values, which pa-rl never "
                              "writes; it was refused unread (loading it could run code)") from error


class CheckpointStore:
    """Numbered checkpoints ``ckpt-000001.pt``, ``ckpt-000002.pt``, … in one folder; keeps the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be ≥ 1, got {keep}")
        self.directory, self.keep = Path(directory), keep

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first (temporary files of an interrupted write are not listed)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if NAME.match(p.name))

    def save(self, state: dict[str, Any]) -> Path:
        existing = self.paths()
        index = int(NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
        path = self.directory / f"ckpt-{index:06d}.pt"
        blob = encode(state)
        for stale in self.directory.glob(".ckpt-*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
        write_atomically(path, lambda tmp: tmp.write_bytes(blob))
        for old in existing[: max(0, len(existing) + 1 - self.keep)]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies; damaged ones are reported and skipped."""
        for path in reversed(self.paths()):
            try:
                return path, decode(path.read_bytes(), str(path))
            except (CheckpointError, OSError, RuntimeError, ValueError, EOFError) as error:
                log.warning("skipping checkpoint %s: %s; falling back to the previous one", path, error)
        return None
