"""Scheduled deletion through the real kms process (fs keystore): a due deletion is carried out
when the kms starts."""
from __future__ import annotations

import json

import grpc
import pytest

from sealstore import errors
from sealstore.v1 import kms_pb2
from tests.kms.conftest import start_kms, stop_kms


@pytest.mark.process
def test_due_deletion_is_carried_out_at_start(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "log"
    kms = start_kms(data, logs)
    try:
        admin = kms.stub("admin")
        admin.CreateKey(kms_pb2.CreateKeyRequest(name="doomed"))
        admin.CreateKey(kms_pb2.CreateKeyRequest(name="spared"))
        with pytest.raises(grpc.RpcError) as refused:
            admin.DeleteKey(kms_pb2.DeleteKeyRequest(name="doomed", pending_window_days=5))
        assert isinstance(errors.from_rpc_error(refused.value), errors.InvalidArgument)
        admin.DeleteKey(kms_pb2.DeleteKeyRequest(name="doomed", pending_window_days=7))
        admin.DeleteKey(kms_pb2.DeleteKeyRequest(name="spared", pending_window_days=30))
    finally:
        stop_kms(kms.process)
    # Seven days pass for "doomed" (the window is recorded in the key file, outside the sealed material).
    path = data / "kms" / "keys" / "doomed.json"
    doc = json.loads(path.read_text())
    assert doc["deletion_ns"] > 0
    doc["deletion_ns"] = 1
    path.write_text(json.dumps(doc))

    kms = start_kms(data, logs)
    try:
        admin = kms.stub("admin")
        # The kms also keeps the deployment's SSE-S3 and default keys (created at its start).
        names = [k.name for k in admin.ListKeys(kms_pb2.ListKeysRequest()).keys if not k.name.startswith("sealstore-")]
        assert names == ["spared"] and not path.exists()
        assert admin.DescribeKey(kms_pb2.KeyRequest(name="spared")).deletion_ns > 0
        assert "key 'doomed' deleted: its scheduled deletion was due" in kms.log_text()
    finally:
        stop_kms(kms.process)
