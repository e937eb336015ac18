"""Multipart objects on four real storage node processes over mTLS, each caller with its own
role's certificate: the crypto worker writes the parts and reads the object, the gateway lists
the upload and completes it, tags the object and sets the bucket's policy; healing sees the
system bucket that S3 listings never show."""
from __future__ import annotations

import asyncio
import random

from sealstore import multipart
from sealstore.erasure.client import ErasureSetClient
from sealstore.erasure.heal import heal_all
from sealstore.multipart import SYSTEM_BUCKET
from tests.erasure.multipart_objects import completed_meta, read_object, upload

BUCKET = "mp-real"
PARTS = [random.Random(n).randbytes(size) for n, size in enumerate((400_000, 250_000, 1_000))]


def test_multipart_object_written_completed_read_and_healed_across_real_nodes(cluster):
    async def scenario():
        writer = ErasureSetClient(cluster.topology, cluster.certs, "crypto", timeout=10)
        gateway = ErasureSetClient(cluster.topology, cluster.certs, "gateway", timeout=10)
        healer = ErasureSetClient(cluster.topology, cluster.certs, "heal", timeout=10)
        try:
            await gateway.make_bucket(BUCKET)
            upload_id, parts = await upload(writer, BUCKET, "obj", PARTS)
            listed, _ = await gateway.list_objects(SYSTEM_BUCKET, multipart.parts_prefix(BUCKET, upload_id), "", 1000)
            assert [(e.part.number, e.part.data_id) for e in listed] == [(p.number, p.data_id) for p in parts]
            assert SYSTEM_BUCKET not in [b.name for b in await gateway.list_buckets()]
            assert SYSTEM_BUCKET in [b.name for b in await healer.list_buckets(include_system=True)]

            meta = completed_meta(gateway, BUCKET, "obj", upload_id, [e.part for e in listed])
            await gateway.complete_multipart(meta)
            assert await read_object(writer, BUCKET, "obj") == b"".join(PARTS)
            assert (await gateway.list_objects(SYSTEM_BUCKET, "", "", 10)) == ([], False)

            await gateway.update_object_tags(BUCKET, "obj", meta.data_id, {"k": "v"})
            assert dict((await gateway.get_object_meta(BUCKET, "obj")).tags) == {"k": "v"}
            info = await gateway.update_bucket(BUCKET, policy_json='{"Statement":[]}', tags={"a": "b"})
            assert (info.policy_json, dict(info.tags)) == ('{"Statement":[]}', {"a": "b"})

            # A part shard lost on one drive: the heal walk rebuilds it, the object reads the same.
            folder = next(cluster.drive_dir(1).glob(f"buckets/{BUCKET}/objects/*/*"))
            (folder / f"{parts[1].data_id}.shard").unlink()
            report = await heal_all(healer, BUCKET)
            assert (report.objects_healed, report.shards_rebuilt) == (1, 1), report.details
            assert (folder / f"{parts[1].data_id}.shard").exists()
            assert await read_object(writer, BUCKET, "obj") == b"".join(PARTS)
        finally:
            for client in (writer, gateway, healer):
                await client.close()
    asyncio.run(scenario())
    for i in range(4):
        leftovers = list((cluster.drive_dir(i) / "buckets" / SYSTEM_BUCKET).rglob("*.json"))
        assert [p.name for p in leftovers] == ["bucket.json"]
