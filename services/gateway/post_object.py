"""Browser POST uploads: multipart/form-data with a signed policy document (POST Object)."""
from __future__ import annotations

from aiohttp import web

from sealstore import errors


async def post_object(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("POST Object (browser uploads) is not implemented yet")
