"""DARE 2.0 (minio/sio's authenticated stream format), byte-compatible with sio v0.4.

Pure: no I/O, no gRPC. The format (docs/crypto.md, "Object data"):

    offset  size  field
    0       1     version 0x20
    1       1     cipher id: 0x00 AES-256-GCM, 0x01 ChaCha20-Poly1305
    2       2     payload length - 1, uint16 little-endian
    4       12    the stream's random value; top bit of byte 4 = FINAL flag
    16      n     ciphertext (1..65536 bytes; exactly 65536 unless final)
    16+n    16    AEAD tag

AEAD nonce of package #seq = header[4:16] with its last 4 bytes (uint32 LE) XOR seq;
associated data = header[0:4]. A stream's last package carries the FINAL flag, so
truncation at a package boundary is detected; an empty plaintext is an empty stream.
"""
from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sealstore import errors

VERSION_20 = 0x20
AES_256_GCM = 0x00
CHACHA20_POLY1305 = 0x01
CIPHER_NAMES = {AES_256_GCM: "AES-256-GCM", CHACHA20_POLY1305: "ChaCha20-Poly1305"}
CIPHER_IDS = {name: cid for cid, name in CIPHER_NAMES.items()}

KEY_SIZE = 32
HEADER_SIZE = 16
TAG_SIZE = 16
RANDOM_SIZE = 12
MAX_PAYLOAD = 1 << 16
MAX_PACKAGE = HEADER_SIZE + MAX_PAYLOAD + TAG_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE
MAX_SEQUENCE = 0xFFFFFFFF
FINAL_FLAG = 0x80

_AEADS = {AES_256_GCM: AESGCM, CHACHA20_POLY1305: ChaCha20Poly1305}


def cipher_id(name: str) -> int:
    """The cipher id for a name as stored in metadata or given on a command line."""
    aliases = {"aes": AES_256_GCM, "aes-256-gcm": AES_256_GCM, "aes256gcm": AES_256_GCM,
               "chacha20": CHACHA20_POLY1305, "chacha20-poly1305": CHACHA20_POLY1305}
    try:
        return aliases[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown DARE cipher {name!r} (AES-256-GCM or ChaCha20-Poly1305)") from None


def new_aead(key: bytes | bytearray, cipher: int):
    if len(key) != KEY_SIZE:
        raise ValueError("a DARE key must be exactly 32 bytes")
    try:
        return _AEADS[cipher](bytes(key))
    except KeyError:
        raise ValueError(f"unsupported DARE cipher id {cipher:#04x}") from None


def _tampered(what: str) -> errors.SealstoreError:
    return errors.ObjectTampered(f"DARE: {what}")


def _nonce(random_value: bytes, final: bool, seq: int) -> bytes:
    """The AEAD nonce: header[4:16] (final bit applied), last 4 bytes XOR seq (uint32 LE)."""
    first = random_value[0] | FINAL_FLAG if final else random_value[0] & 0x7F
    counter = int.from_bytes(random_value[8:12], "little") ^ seq
    return bytes((first,)) + random_value[1:8] + counter.to_bytes(4, "little")


def _header(cipher: int, payload_len: int, random_value: bytes, final: bool) -> bytes:
    return (struct.pack("<BBH", VERSION_20, cipher, payload_len - 1)
            + _nonce(random_value, final, 0))


# --- size maths (sio EncryptedSize / DecryptedSize) -------------------------------------

def encrypted_size(plain_size: int) -> int:
    full, rest = divmod(plain_size, MAX_PAYLOAD)
    return full * MAX_PACKAGE + (rest + OVERHEAD if rest else 0)


def decrypted_size(enc_size: int) -> int:
    full, rest = divmod(enc_size, MAX_PACKAGE)
    if 0 < rest <= OVERHEAD:
        raise _tampered(f"a stored stream of {enc_size} bytes cannot be a DARE 2.0 stream")
    return full * MAX_PAYLOAD + (rest - OVERHEAD if rest else 0)


def package_count(plain_size: int) -> int:
    return -(-plain_size // MAX_PAYLOAD)


@dataclass(frozen=True)
class PackageRange:
    """Where the plaintext range [offset, offset+length) lives in the ciphertext stream."""

    first_package: int
    """Index (= sequence number) of the first package to decrypt."""
    skip: int
    """Plaintext bytes of the first package before the range starts."""
    last_package: int
    """Index of the last package to decrypt (first_package - 1 for an empty range)."""
    ciphertext_offset: int
    ciphertext_length: int


def package_range(offset: int, length: int, plain_size: int) -> PackageRange:
    """The packages covering a plaintext range of an object of `plain_size` bytes."""
    if offset < 0 or length < 0 or offset + length > plain_size:
        raise ValueError(f"range {offset}+{length} is outside an object of {plain_size} bytes")
    first, skip = divmod(offset, MAX_PAYLOAD)
    if length == 0:
        return PackageRange(first, 0, first - 1, first * MAX_PACKAGE, 0)
    last = (offset + length - 1) // MAX_PAYLOAD
    if last + 1 > MAX_SEQUENCE:
        raise ValueError("DARE 2.0 streams hold at most 2^32-1 packages")
    start = first * MAX_PACKAGE
    end = min((last + 1) * MAX_PACKAGE, encrypted_size(plain_size))
    return PackageRange(first, skip, last, start, end - start)


# --- single packages -------------------------------------------------------------------

def new_random_value() -> bytes:
    return os.urandom(RANDOM_SIZE)


def seal_package(key: bytes | bytearray, payload: bytes, *, cipher: int = AES_256_GCM,
                 random_value: bytes | None = None, seq: int = 0, final: bool = True) -> bytes:
    """One DARE 2.0 package of `payload` (1..65536 bytes; exactly 65536 unless final)."""
    if not 0 < len(payload) <= MAX_PAYLOAD or (not final and len(payload) != MAX_PAYLOAD):
        raise ValueError("invalid DARE payload size")
    if not 0 <= seq <= MAX_SEQUENCE:
        raise ValueError("DARE sequence number out of range")
    random_value = new_random_value() if random_value is None else random_value
    if len(random_value) != RANDOM_SIZE:
        raise ValueError("the DARE random value is 12 bytes")
    header = _header(cipher, len(payload), random_value, final)
    return header + new_aead(key, cipher).encrypt(_nonce(header[4:], final, seq), payload, header[:4])


def open_package(key: bytes | bytearray, package: bytes, *, seq: int = 0) -> tuple[bytes, bool]:
    """Authenticates and decrypts one package: (plaintext, is_final). ObjectTampered if not authentic."""
    header = bytes(package[:HEADER_SIZE])
    if len(header) < 4:
        raise _tampered("package too short")
    _check_static_header(header)
    aead = new_aead(key, header[1])
    plain = bytearray(_payload_len(header))
    _open_into(aead, header, memoryview(package), seq, memoryview(plain), package_len=len(package))
    return bytes(plain), bool(header[4] & FINAL_FLAG)


def _payload_len(header: bytes) -> int:
    return (header[2] | header[3] << 8) + 1


def _check_static_header(header: bytes) -> None:
    if header[0] != VERSION_20:
        raise _tampered("unsupported version")
    if header[1] not in _AEADS:
        raise _tampered("unsupported cipher suite")


def _open_into(aead, header: bytes, package: memoryview, seq: int, out: memoryview, package_len: int) -> None:
    n = _payload_len(header)
    if package_len != HEADER_SIZE + n + TAG_SIZE:
        raise _tampered("invalid payload size")
    final = bool(header[4] & FINAL_FLAG)
    if not final and n != MAX_PAYLOAD:
        raise _tampered("invalid payload size")
    counter = int.from_bytes(header[12:16], "little") ^ seq
    nonce = header[4:12] + counter.to_bytes(4, "little")
    try:
        aead.decrypt_into(nonce, package[HEADER_SIZE:package_len], header[:4], out[:n])
    except InvalidTag:
        raise _tampered("authentication failed") from None


# --- streams ---------------------------------------------------------------------------

class DareEncryptor:
    """Encrypts a stream fed in chunks of any size into DARE 2.0 packages.

    Holds back up to one full payload so that the last package can be flagged final:
    a full payload is only emitted once at least one more byte has arrived. Yielded
    packages are views of an internal buffer, valid until the next package is produced.
    """

    def __init__(self, key: bytes | bytearray, *, cipher: int = AES_256_GCM,
                 random_value: bytes | None = None, seq: int = 0):
        self._aead = new_aead(key, cipher)
        self.cipher = cipher
        self._random = new_random_value() if random_value is None else bytes(random_value)
        if len(self._random) != RANDOM_SIZE:
            raise ValueError("the DARE random value is 12 bytes")
        self.seq = seq
        self._pending = bytearray(MAX_PAYLOAD)
        self._pending_len = 0
        self._out = bytearray(MAX_PACKAGE)
        self._out_view = memoryview(self._out)
        self._full_header = _header(cipher, MAX_PAYLOAD, self._random, False)
        self._nonce_prefix = self._full_header[4:12]
        self._counter = int.from_bytes(self._random[8:12], "little")
        self._out[:HEADER_SIZE] = self._full_header
        self.finished = False
        self.plain_bytes = 0

    def _seal_full(self, payload) -> memoryview:
        if self.seq > MAX_SEQUENCE:
            raise ValueError("DARE 2.0 stream too long")
        nonce = self._nonce_prefix + (self._counter ^ self.seq).to_bytes(4, "little")
        self._aead.encrypt_into(nonce, payload, self._full_header[:4], self._out_view[HEADER_SIZE:])
        self.seq += 1
        return self._out_view

    def update(self, data) -> Iterator[memoryview]:
        if self.finished:
            raise ValueError("the stream is finished")
        view = memoryview(data).cast("B")
        self.plain_bytes += len(view)
        pos, size = 0, len(view)
        pending = self._pending
        while pos < size:
            if self._pending_len == MAX_PAYLOAD:
                # More data follows, so the held-back payload is not the last one.
                self._out[:HEADER_SIZE] = self._full_header
                yield self._seal_full(pending)
                self._pending_len = 0
            if self._pending_len == 0 and size - pos > MAX_PAYLOAD:
                # Whole payloads straight from the caller's buffer, no copy.
                self._out[:HEADER_SIZE] = self._full_header
                yield self._seal_full(view[pos:pos + MAX_PAYLOAD])
                pos += MAX_PAYLOAD
                continue
            take = min(MAX_PAYLOAD - self._pending_len, size - pos)
            pending[self._pending_len:self._pending_len + take] = view[pos:pos + take]
            self._pending_len += take
            pos += take

    def finish(self) -> Iterator[memoryview]:
        """Emits the final package (nothing for an empty stream)."""
        if self.finished:
            return
        self.finished = True
        n = self._pending_len
        if n == 0:
            return
        header = _header(self.cipher, n, self._random, True)
        self._out[:HEADER_SIZE] = header
        nonce = header[4:12] + (self._counter ^ self.seq).to_bytes(4, "little")
        self._aead.encrypt_into(nonce, memoryview(self._pending)[:n], header[:4],
                                self._out_view[HEADER_SIZE:HEADER_SIZE + n + TAG_SIZE])
        self.seq += 1
        self._pending_len = 0
        yield self._out_view[:HEADER_SIZE + n + TAG_SIZE]


class DareDecryptor:
    """Authenticates and decrypts a DARE 2.0 stream fed in chunks of any size.

    `seq` is the sequence number of the first package fed (a ranged read starts in the
    middle). `last_seq`, when known, is the index of the stream's final package: a final
    flag anywhere else, or a missing one there, is tampering. Yielded plaintext views
    are valid until the next package is produced. Every failure is ObjectTampered.
    """

    def __init__(self, key: bytes | bytearray, *, seq: int = 0, last_seq: int | None = None,
                 cipher: int | None = None):
        self._key = bytes(key)
        if len(self._key) != KEY_SIZE:
            raise ValueError("a DARE key must be exactly 32 bytes")
        self._aeads: dict[int, object] = {}
        self.cipher = cipher
        self.seq = seq
        self.last_seq = last_seq
        self._ref_nonce: bytes | None = None
        self._buf = bytearray(MAX_PACKAGE)
        self._buf_view = memoryview(self._buf)
        self._buf_len = 0
        self._plain = bytearray(MAX_PAYLOAD)
        self._plain_view = memoryview(self._plain)
        self.final_seen = False
        self.plain_bytes = 0

    def _aead(self, cipher: int):
        aead = self._aeads.get(cipher)
        if aead is None:
            aead = self._aeads[cipher] = new_aead(self._key, cipher)
        return aead

    def _open(self, package: memoryview, length: int) -> memoryview:
        header = bytes(package[:HEADER_SIZE])
        if self.final_seen:
            raise _tampered("unexpected data after final package")
        _check_static_header(header)
        if self.cipher is None:
            self.cipher = header[1]
        elif header[1] != self.cipher:
            raise _tampered("cipher suite changed within the stream")
        final = bool(header[4] & FINAL_FLAG)
        nonce = bytes((header[4] & 0x7F,)) + header[5:16]
        if self._ref_nonce is None:
            self._ref_nonce = nonce
        elif not hmac.compare_digest(nonce, self._ref_nonce):
            raise _tampered("header nonce mismatch")
        if self.last_seq is not None:
            if final != (self.seq == self.last_seq) or self.seq > self.last_seq:
                raise _tampered(f"final flag misplaced at package {self.seq}")
        if self.seq > MAX_SEQUENCE:
            raise _tampered("stream too long")
        _open_into(self._aead(header[1]), header, package, self.seq, self._plain_view, length)
        self.seq += 1
        self.final_seen = final
        n = length - OVERHEAD
        self.plain_bytes += n
        return self._plain_view[:n]

    def _wanted(self, header_bytes) -> int:
        """Length of the package whose first >= 4 bytes are given."""
        return HEADER_SIZE + (header_bytes[2] | header_bytes[3] << 8) + 1 + TAG_SIZE

    def update(self, data) -> Iterator[memoryview]:
        view = memoryview(data).cast("B")
        pos, size = 0, len(view)
        while pos < size:
            if self.final_seen:
                raise _tampered("unexpected data after final package")
            if self._buf_len == 0 and size - pos >= 4:
                want = self._wanted(view[pos:pos + 4])
                if size - pos >= want:
                    yield self._open(view[pos:pos + want], want)
                    pos += want
                    continue
            if self._buf_len < 4:
                take = min(4 - self._buf_len, size - pos)
                self._buf[self._buf_len:self._buf_len + take] = view[pos:pos + take]
                self._buf_len += take
                pos += take
                if self._buf_len < 4:
                    break
            want = self._wanted(self._buf)
            take = min(want - self._buf_len, size - pos)
            self._buf[self._buf_len:self._buf_len + take] = view[pos:pos + take]
            self._buf_len += take
            pos += take
            if self._buf_len == want:
                self._buf_len = 0
                yield self._open(self._buf_view[:want], want)

    def finish(self) -> None:
        """Checks the stream ended with its final package (truncation protection)."""
        if self._buf_len:
            raise _tampered("unexpected EOF inside a package")
        if not self.final_seen:
            raise _tampered("unexpected EOF: no final package")

    def check_complete_prefix(self) -> None:
        """For a ranged read that stops before the end: no partial package may remain."""
        if self._buf_len:
            raise _tampered("unexpected EOF inside a package")


# --- whole-buffer helpers (tests, the CLI, small values) --------------------------------

def encrypt_stream(key: bytes | bytearray, chunks: Iterable[bytes], *, cipher: int = AES_256_GCM,
                   random_value: bytes | None = None, seq: int = 0) -> Iterator[bytes]:
    enc = DareEncryptor(key, cipher=cipher, random_value=random_value, seq=seq)
    for chunk in chunks:
        for package in enc.update(chunk):
            yield bytes(package)
    for package in enc.finish():
        yield bytes(package)


def decrypt_stream(key: bytes | bytearray, chunks: Iterable[bytes], *, seq: int = 0) -> Iterator[bytes]:
    dec = DareDecryptor(key, seq=seq)
    for chunk in chunks:
        for plain in dec.update(chunk):
            yield bytes(plain)
    dec.finish()


def encrypt(key: bytes | bytearray, plaintext: bytes, **kwargs) -> bytes:
    return b"".join(encrypt_stream(key, [plaintext], **kwargs))


def decrypt(key: bytes | bytearray, ciphertext: bytes, *, seq: int = 0) -> bytes:
    if not ciphertext:
        return b""
    return b"".join(decrypt_stream(key, [ciphertext], seq=seq))
