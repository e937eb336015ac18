"""Bucket and object sub-resources: policy, tagging, ACL, versioning, ListObjectVersions."""
from __future__ import annotations

from aiohttp import web

from sealstore import errors


async def bucket_policy(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The policy sub-resource is not implemented yet")


async def bucket_tagging(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The tagging sub-resource is not implemented yet")


async def bucket_acl(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The acl sub-resource is not implemented yet")


async def bucket_versioning(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The versioning sub-resource is not implemented yet")


async def list_object_versions(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The versions sub-resource is not implemented yet")


async def object_tagging(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The tagging sub-resource is not implemented yet")


async def object_acl(api, request: web.Request, identity, t) -> web.StreamResponse:
    raise errors.NotImplementedS3("The acl sub-resource is not implemented yet")
