"""CopyObject and UploadPartCopy: the copy source header, its conditions and SSE-C key; the
worker (CryptoService.CopyObject) reads, decrypts, re-encrypts under fresh keys and writes."""
from __future__ import annotations

from aiohttp import web

from sealstore import errors


async def copy_object(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("CopyObject is not implemented yet")


async def upload_part_copy(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("UploadPartCopy is not implemented yet")
