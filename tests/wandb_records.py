"""Read an offline W&B run back from its ``.wandb`` file: the records W&B would upload.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks
of LevelDB-log records (CRC32, length, type: full / first / middle / last), each a serialized
``wandb_internal_pb2.Record``. wandb ≥ 0.20 no longer ships a Python reader, so the tests carry
this one (format: wandb/sdk/internal/datastore.py of earlier releases).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the block's end (W&B pads a 7-byte tail too)
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def records(path: Path):
    """``(kind, message)`` for every record: ``run``, ``history``, ``summary``, ``artifact``, ..."""
    from wandb.proto import wandb_internal_pb2

    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        yield kind, getattr(record, kind) if kind else None


#: how long to wait for W&B's service to finish writing a log after ``run.finish()`` returned
WRITE_TIMEOUT_S = 30.0


def finished_records(path: Path, timeout: float = WRITE_TIMEOUT_S) -> list:
    """The records of a log once W&B has written all of it: ``run.finish()`` can return before the
    service process has flushed the file (seen under load as a log without its run record), and the
    last record of a finished run is ``exit``; wait for it (≤ ``timeout`` s), then read."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path)) if Path(path).exists() else []
        if (found and found[-1][0] == "exit") or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def offline_run(run_dir: Path) -> dict:
    """The one offline W&B run under ``run_dir/wandb``: its run record, the final summary (updates
    applied in order) and its artifacts (read once W&B has finished writing the log)."""
    import time

    deadline = time.monotonic() + WRITE_TIMEOUT_S
    while not (files := list(Path(run_dir).glob("wandb/offline-run-*/*.wandb"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(files) != 1:
        raise AssertionError(f"expected one offline W&B run under {run_dir}, found {files}")
    run, summary, artifacts = None, {}, []
    for kind, message in finished_records(files[0]):
        if kind == "run":
            run = message
        elif kind == "summary":
            for item in message.update:
                keys = list(item.nested_key) or [item.key]
                node = summary
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append(message)
    return {"run": run, "summary": summary, "artifacts": artifacts}
