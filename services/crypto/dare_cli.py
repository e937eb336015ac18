"""`sealstore dare encrypt|decrypt --key-file F [--cipher aes|chacha20]`: DARE 2.0 on stdin -> stdout.

The key file holds 32 raw bytes or 64 hex characters. Output is compatible with minio/sio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sealstore import errors
from services.crypto import dare

READ_SIZE = 1 << 20


def read_key(path: Path) -> bytes:
    raw = path.read_bytes()
    if len(raw) == dare.KEY_SIZE:
        return raw
    text = raw.strip()
    if len(text) == 2 * dare.KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ValueError(f"{path}: a key file holds 32 raw bytes or 64 hex characters")


def _chunks(stream):
    while True:
        chunk = stream.read(READ_SIZE)
        if not chunk:
            return
        yield chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sealstore dare", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("encrypt", "decrypt"))
    parser.add_argument("--key-file", required=True, type=Path)
    parser.add_argument("--cipher", default="aes", help="aes (AES-256-GCM) or chacha20 (encrypt only)")
    args = parser.parse_args(argv)
    try:
        key = read_key(args.key_file)
        cipher = dare.cipher_id(args.cipher)
    except (OSError, ValueError) as exc:
        print(f"sealstore dare: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    try:
        if args.mode == "encrypt":
            for package in dare.encrypt_stream(key, _chunks(sys.stdin.buffer), cipher=cipher):
                out.write(package)
        else:
            for plain in dare.decrypt_stream(key, _chunks(sys.stdin.buffer)):
                out.write(plain)
        out.flush()
    except errors.SealstoreError as exc:
        print(f"sealstore dare: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
