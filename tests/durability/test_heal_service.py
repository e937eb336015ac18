"""Heal inside the cluster (issue 8, item 2): the heal service's background scanner repairs a
wiped drive with no read and no command, and `sealstore admin heal` asks the service over gRPC
(the command line does no healing itself: without the service it fails)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

from tests.cluster.harness import start_cluster, stop_cluster
from tests.durability.conftest import current_shards, drives, heal, payload, shard_sound, wait_until

SIZE = 3 * 1024 * 1024  # several stripes: shard files beside the metadata
SMALL = 1000  # inline: the shard lives in the metadata file


def _wipe(drive: Path) -> None:
    for child in drive.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _sound_on(cluster, drive: Path, bucket: str, key: str) -> bool:
    copy = current_shards(cluster, bucket, key).get(drive)
    if copy is None:
        return False
    return bool(copy["meta"].get("inline_shard")) or shard_sound(copy["path"], copy["meta"])


def test_the_scanner_repairs_a_wiped_drive_by_itself(tmp_path):
    c = start_cluster(tmp_path, extra_env={"SEALSTORE_HEAL_INTERVAL": "1", "SEALSTORE_HEAL_RATE": "50"})
    try:
        s3 = c.s3()
        s3.create_bucket(Bucket="scanned")
        objects = {f"big-{i}": payload(SIZE, i) for i in range(2)} | {f"small-{i}": payload(SMALL, 10 + i)
                                                                       for i in range(3)}
        for key, body in objects.items():
            s3.put_object(Bucket="scanned", Key=key, Body=body)
        wiped = drives(c)[1]
        # The scanner walks every second: hold it while the drive is wiped and checked, so that a
        # walk can neither race the wipe nor repair a copy before the check below sees it gone.
        heal_pid = next(s["pid"] for s in json.loads((c.data / "cluster.json").read_text())["services"]
                        if s["role"] == "heal")
        os.kill(heal_pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # a shard stream the scanner had open settles before the wipe
            _wipe(wiped)
            assert not any(_sound_on(c, wiped, "scanned", k) for k in objects)
        finally:
            os.kill(heal_pid, signal.SIGCONT)
        # No GET, no command: only the scanner can bring the copies back.
        wait_until(lambda: all(_sound_on(c, wiped, "scanned", k) for k in objects), timeout=90,
                   what="the scanner rebuilding the wiped drive")

        def rebuilt() -> int:
            log = (c.data / "logs" / "heal.log").read_text()
            return sum(int(n) for n in re.findall(r"heal \w+ done: .*shards rebuilt (\d+)", log))
        # A walk logs its count when it ends: the one that rebuilt the last copy may still be
        # running (the walk held by SIGSTOP above rebuilds what it had not passed yet, the next
        # walk the rest).
        wait_until(lambda: rebuilt() >= len(objects), timeout=30, what="the scanner's walks reporting their rebuilds")
        log = (c.data / "logs" / "heal.log").read_text()
        assert "started by admin" not in log and "started by scanner" in log
        status = c.cli("admin", "heal", "--status", "--json")
        scanner = json.loads(status.stdout)["scanner"]
        assert scanner["enabled"] and float(scanner["interval_seconds"]) == 1.0
        assert int(scanner.get("walks", 0)) >= 1
        for key, body in objects.items():
            assert s3.get_object(Bucket="scanned", Key=key)["Body"].read() == body
    finally:
        assert stop_cluster(c) == 0


def test_admin_heal_asks_the_heal_service_and_shows_its_counts(tmp_path):
    # KEEP_GOING: the heal service, once killed below, stays down.
    c = start_cluster(tmp_path, extra_env={"SEALSTORE_KEEP_GOING": "1"})
    try:
        s3 = c.s3()
        s3.create_bucket(Bucket="asked")
        body = payload(SIZE, 5)
        s3.put_object(Bucket="asked", Key="obj", Body=body)
        victim = current_shards(c, "asked", "obj")[drives(c)[2]]
        victim["path"].unlink()

        dry = heal(c, "--dry-run")
        assert dry["dry_run"] and dry["shards_rebuilt"] == 1 and not victim["path"].exists()
        report = heal(c)
        assert report["objects_scanned"] == 1 and report["objects_healed"] == 1 and report["shards_rebuilt"] == 1
        assert shard_sound(victim["path"], victim["meta"])
        assert any("asked/obj" in line for line in report["details"])
        # The heal ran in the heal service, under the id the command printed.
        assert f"heal {report['id']} started by admin" in (c.data / "logs" / "heal.log").read_text()

        text = c.cli("admin", "heal", "--bucket", "asked").stdout.decode()
        assert "objects scanned 1, objects healed 0, shards rebuilt 0" in text
        missing = c.cli("admin", "heal", "--bucket", "no-such-bucket", check=False)
        assert missing.returncode == 1 and b"NoSuchBucket" in missing.stderr and b"Traceback" not in missing.stderr

        c.kill("heal")
        down = c.cli("admin", "heal", check=False)
        assert down.returncode == 1 and b"does not answer" in down.stderr
        assert len(down.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in down.stderr
        assert s3.get_object(Bucket="asked", Key="obj")["Body"].read() == body  # the data path does not need it
    finally:
        stop_cluster(c)
