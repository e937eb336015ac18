"""`sealstore dare` (services.crypto.dare_cli) through a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.crypto import dare, dare_cli

# Runs the command line as a child process: not part of the unit layer.
pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
# minio/sio golden vectors (provenance: tests/crypto/vectors/PROVENANCE.md).
VECTORS = json.loads((Path(__file__).resolve().parent / "vectors" / "dare-v20.json").read_text())


def run_cli(*args: str, input: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.crypto.dare_cli", *args], input=input,
                          capture_output=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("cipher", ["aes", "chacha20"])
def test_round_trip_through_subprocess(tmp_path, cipher):
    key_file = tmp_path / "key.hex"
    key = os.urandom(32)
    key_file.write_text(key.hex() + "\n")
    data = os.urandom(3 * 65536 + 77)
    enc = run_cli("encrypt", "--key-file", str(key_file), "--cipher", cipher, input=data)
    assert enc.returncode == 0, enc.stderr
    assert len(enc.stdout) == dare.encrypted_size(len(data))
    assert enc.stdout[1] == dare.cipher_id(cipher)
    assert dare.decrypt(key, enc.stdout) == data
    dec = run_cli("decrypt", "--key-file", str(key_file), input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data


def test_decrypts_golden_vector_with_raw_key_file(tmp_path):
    key_file = tmp_path / "key.bin"
    key_file.write_bytes(bytes.fromhex(VECTORS["key_hex"]))
    vector = VECTORS["golden"][0]  # sequence number 0: a stream of its own
    result = run_cli("decrypt", "--key-file", str(key_file), input=bytes.fromhex(vector["package_hex"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"\x00"


def test_tampered_input_fails(tmp_path):
    key_file = tmp_path / "key.hex"
    key_file.write_text("11" * 32)
    ct = bytearray(dare.encrypt(bytes.fromhex("11" * 32), b"hello world"))
    ct[-1] ^= 1
    result = run_cli("decrypt", "--key-file", str(key_file), input=bytes(ct))
    assert result.returncode == 1
    assert b"authentication failed" in result.stderr
    assert result.stdout == b""


def test_bad_key_file_is_refused(tmp_path):
    key_file = tmp_path / "short"
    key_file.write_bytes(b"abc")
    assert dare_cli.main(["encrypt", "--key-file", str(key_file)]) == 2
