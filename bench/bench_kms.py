"""GenerateKey+Decrypt round trips per second through the kms gRPC service, per keystore
(fs, OpenBao KV, OpenBao transit), each beside OpenBao called directly with hvac in the same
run. Starts its own `bao server -dev` and kms processes; prints figures, asserts nothing.

    .venv/bin/python bench/bench_kms.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sealstore.v1 import kms_pb2  # noqa: E402
from tests.kms.conftest import start_kms, stop_kms  # noqa: E402
from tests.kms.openbao_harness import start_dev  # noqa: E402

CTX = b'{"bench":"bench/object"}'


def rate(seconds: float, round_trip) -> float:
    round_trip()  # warm up (cache, connections)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        round_trip()
        count += 1
    return count / (time.perf_counter() - start)


def through_kms(tmp: Path, env: dict, seconds: float) -> float:
    kms = start_kms(tmp / "data", tmp / "log", env)
    try:
        kms.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="bench"))
        crypto = kms.stub("crypto")

        def round_trip():
            dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="bench", context=CTX))
            crypto.Decrypt(kms_pb2.DecryptRequest(name="bench", ciphertext=dek.ciphertext, context=CTX))
        return rate(seconds, round_trip)
    finally:
        stop_kms(kms.process)


def hvac_transit(bao, seconds: float) -> float:
    client = bao.client()
    client.secrets.transit.create_key("bench-direct", derived=True, mount_point="transit")
    context = base64.b64encode(CTX).decode()

    def round_trip():
        reply = client.secrets.transit.generate_data_key("bench-direct", key_type="plaintext", context=context,
                                                         bits=256, mount_point="transit")
        client.secrets.transit.decrypt_data("bench-direct", reply["data"]["ciphertext"], context=context,
                                            mount_point="transit")
    return rate(seconds, round_trip)


def hvac_kv(bao, seconds: float) -> float:
    """What a KV keystore without a cache would pay: one KV read per GenerateKey and per Decrypt."""
    client = bao.client()
    client.secrets.kv.v2.create_or_update_secret("bench/direct", secret={"k": "v"}, cas=0, mount_point="secret")

    def round_trip():
        client.secrets.kv.v2.read_secret_version("bench/direct", mount_point="secret", raise_on_deleted_version=True)
        client.secrets.kv.v2.read_secret_version("bench/direct", mount_point="secret", raise_on_deleted_version=True)
    return rate(seconds, round_trip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bao = start_dev(tmp / "openbao")
        try:
            rows = [
                ("fs", through_kms(tmp / "fs", {}, args.seconds), None),
                ("openbao-kv", through_kms(tmp / "kv", bao.kms_env("openbao-kv"), args.seconds),
                 ("2 KV reads", hvac_kv(bao, args.seconds))),
                ("openbao-transit", through_kms(tmp / "transit", bao.kms_env("openbao-transit"), args.seconds),
                 ("transit datakey+decrypt", hvac_transit(bao, args.seconds))),
            ]
        finally:
            bao.stop()
    print(f"GenerateKey+Decrypt round trips/s, one synchronous client, {args.seconds:.0f} s each")
    print(f"{'keystore':<18} {'kms gRPC (mTLS)':>16}   {'OpenBao direct (hvac)':>24}")
    for keystore, through, direct in rows:
        direct_text = f"{direct[1]:8.0f}  ({direct[0]})" if direct else "       -"
        print(f"{keystore:<18} {through:16.0f}   {direct_text}")


if __name__ == "__main__":
    main()
