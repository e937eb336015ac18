"""Prometheus metrics of a storage node, per drive (label `drive`: the drive's folder).

Bytes and errors are counted where the servicer moves them; free space, size and state are
read from the drives when Prometheus scrapes, so they are never stale."""
from __future__ import annotations

import shutil

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, REGISTRY

WRITTEN = Counter("sealstore_storage_drive_written_bytes_total", "Shard bytes written to a drive (framed blocks)",
                  ["drive"])
READ = Counter("sealstore_storage_drive_read_bytes_total", "Shard bytes read from a drive (framed blocks)", ["drive"])
ERRORS = Counter("sealstore_storage_drive_errors_total", "I/O errors of a drive, by gRPC method", ["drive", "method"])

STATES = ("online", "foreign", "misplaced")


def drive_label(node, index) -> str:
    try:
        return str(node.all_drives[int(index)].root)
    except (IndexError, TypeError, ValueError):
        return "?"


class _DriveCollector:
    def __init__(self, node) -> None:
        self.node = node

    def collect(self):
        free = GaugeMetricFamily("sealstore_storage_drive_free_bytes", "Free bytes on the drive's filesystem",
                                 labels=["drive"])
        total = GaugeMetricFamily("sealstore_storage_drive_total_bytes", "Size of the drive's filesystem",
                                  labels=["drive"])
        online = GaugeMetricFamily("sealstore_storage_drive_online", "1 if the drive is in use, 0 if refused "
                                   "or unreadable", labels=["drive"])
        state = GaugeMetricFamily("sealstore_storage_drive_state", "1 for the drive's state (online, foreign, "
                                  "misplaced, unreachable)", labels=["drive", "state"])
        for drive in self.node.all_drives:
            name = str(drive.root)
            try:
                usage = shutil.disk_usage(drive.root)
            except OSError:
                usage = None
            current = drive.state if usage is not None else "unreachable"
            if usage is not None:
                free.add_metric([name], usage.free)
                total.add_metric([name], usage.total)
            online.add_metric([name], 1 if current == "online" and not drive.refusal else 0)
            for s in (*STATES, "unreachable"):
                state.add_metric([name, s], 1 if s == current else 0)
        yield from (free, total, online, state)


def watch_drives(node) -> None:
    """Registers the drives of `node` with the process's registry (once per process)."""
    REGISTRY.register(_DriveCollector(node))
