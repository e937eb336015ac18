"""Multipart upload operations: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads.

Uploads in progress live in the `.multipart` system bucket (sealstore/multipart.py). Part bytes
go to a crypto worker (PutObject with a part target); the rest is metadata through the quorum client.
"""
from __future__ import annotations

from aiohttp import web

from sealstore import errors


async def create_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("CreateMultipartUpload is not implemented yet")


async def upload_part(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("UploadPart is not implemented yet")


async def complete_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("CompleteMultipartUpload is not implemented yet")


async def abort_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("AbortMultipartUpload is not implemented yet")


async def list_parts(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("ListParts is not implemented yet")


async def list_uploads(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("ListMultipartUploads is not implemented yet")
