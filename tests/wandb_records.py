"""Reads an offline W&B run file (``run-<id>.wandb``) so tests can check what was logged.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks
of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)
carrying serialized ``wandb.proto.wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            parts = chunk
        else:
            parts += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            out.append(rec)
    return out


def history(path: Path) -> list[dict]:
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                         for i in r.history.item})
    return rows


def run_info(path: Path) -> pb.RunRecord:
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def summary(path: Path) -> dict:
    """The run's summary: every summary record's updates, later ones winning."""
    out: dict = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in r.summary.update})
    return out
