"""S3 XML of the bucket and object sub-resources: tagging, ACLs, versioning, ListObjectVersions.

Pure, like s3xml (whose parser, with its DTD refusal, and whose rendering this module reuses):
plain values in, bytes out, or bytes in, validated values out.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Iterable, Mapping
from urllib.parse import parse_qsl

from sealstore import errors

from .s3xml import MAX_CONFIG_XML, NS, OWNER_ID, OWNER_NAME, Listing, _children, _local, _parse, _render, _sub, \
    _text, iso8601, quote_etag

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# AWS's tag alphabet: letters, digits and spaces in any script, and + - = . _ : / @
_TAG_TEXT = re.compile(r"^[\w\s+\-=._:/@]*$")
PRIVATE_CANNED_ACLS = frozenset({"private", "bucket-owner-full-control"})
"""Canned ACLs that grant nothing beyond the owner's full control: what a bucket with ACLs
disabled accepts (AWS: BucketOwnerEnforced). Anything else is AccessControlListNotSupported."""
GRANT_HEADERS = ("x-amz-grant-read", "x-amz-grant-write", "x-amz-grant-read-acp", "x-amz-grant-write-acp",
                 "x-amz-grant-full-control")
XSI = "http://www.w3.org/2001/XMLSchema-instance"
VERSIONING_STATUSES = ("Enabled", "Suspended")
NULL_VERSION = "null"


# ---------------------------------------------------------------------------------------------
# Tags


def validate_tags(pairs: Iterable[tuple[str, str]], *, bucket: bool = False) -> dict[str, str]:
    """AWS's tag rules; BadRequest for too many tags (AWS's code for it), InvalidTag otherwise."""
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key in tags:
            raise errors.InvalidTag("Cannot provide multiple Tags with the same key")
        if not key or len(key) > MAX_TAG_KEY:
            raise errors.InvalidTag(f"The TagKey you have provided is invalid: it must be 1 to {MAX_TAG_KEY} "
                                    "characters long")
        if len(value) > MAX_TAG_VALUE:
            raise errors.InvalidTag(f"The TagValue you have provided is too long, max {MAX_TAG_VALUE}")
        if key.lower().startswith("aws:"):
            raise errors.InvalidTag("System tags cannot be added/updated by requester")
        if not _TAG_TEXT.match(key):
            raise errors.InvalidTag("The TagKey you have provided is invalid")
        if not _TAG_TEXT.match(value):
            raise errors.InvalidTag("The TagValue you have provided is invalid")
        tags[key] = value
    limit = MAX_BUCKET_TAGS if bucket else MAX_OBJECT_TAGS
    if len(tags) > limit:
        raise errors.BadRequest(f"Bucket tag count cannot be greater than {limit}" if bucket
                                else f"Object tags cannot be greater than {limit}")
    return tags


def parse_tagging(body: bytes, *, bucket: bool = False) -> dict[str, str]:
    """`<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>`, validated."""
    root = _parse(body, MAX_CONFIG_XML)
    if _local(root.tag) != "Tagging":
        raise errors.MalformedXML("root element must be Tagging")
    sets = _children(root, "TagSet")
    if len(sets) != 1:
        raise errors.MalformedXML("Tagging needs exactly one TagSet")
    pairs = []
    for tag in sets[0]:
        if _local(tag.tag) != "Tag":
            raise errors.MalformedXML(f"unexpected element {_local(tag.tag)!r} in TagSet")
        key, value = _text(tag, "Key"), _text(tag, "Value")
        if key is None or value is None:
            raise errors.MalformedXML("each Tag needs a Key and a Value")
        pairs.append((key, value))
    return validate_tags(pairs, bucket=bucket)


def parse_tagging_header(value: str) -> dict[str, str]:
    """x-amz-tagging: tags as a URL query string (`a=1&b=2`)."""
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=bool(value), errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL "
                                     "query parameters without tag name duplicates.") from None
    return validate_tags(pairs)


def tagging(tags: Mapping[str, str]) -> bytes:
    root = ET.Element("Tagging", xmlns=NS)
    tag_set = _sub(root, "TagSet")
    for key in sorted(tags):
        tag = _sub(tag_set, "Tag")
        _sub(tag, "Key", key)
        _sub(tag, "Value", tags[key])
    return _render(root)


# ---------------------------------------------------------------------------------------------
# ACLs (ACLs disabled: the owner has full control, always)


def access_control_policy() -> bytes:
    root = ET.Element("AccessControlPolicy", xmlns=NS)
    owner = _sub(root, "Owner")
    _sub(owner, "ID", OWNER_ID)
    _sub(owner, "DisplayName", OWNER_NAME)
    grant = _sub(_sub(root, "AccessControlList"), "Grant")
    grantee = ET.SubElement(grant, "Grantee", {"xmlns:xsi": XSI, "xsi:type": "CanonicalUser"})
    _sub(grantee, "ID", OWNER_ID)
    _sub(grantee, "DisplayName", OWNER_NAME)
    _sub(grant, "Permission", "FULL_CONTROL")
    return _render(root)


def check_acl_headers(headers: Mapping[str, str]) -> bool:
    """AccessControlListNotSupported for an ACL that grants anything beyond the owner's full
    control; True when the request names an ACL at all (a private canned ACL)."""
    canned = headers.get("x-amz-acl")
    if any(name in headers for name in GRANT_HEADERS):
        raise errors.AccessControlListNotSupported("The bucket does not allow ACLs: grants other than the "
                                                   "owner's full control are not supported")
    if canned is None:
        return False
    if canned.strip() not in PRIVATE_CANNED_ACLS:
        raise errors.AccessControlListNotSupported(
            f"The bucket does not allow ACLs: canned ACL {canned.strip()[:64]!r} is not supported; only private "
            "(the owner's full control) is")
    return True


def check_acl_body(body: bytes) -> None:
    """An AccessControlPolicy may only grant the owner FULL_CONTROL."""
    root = _parse(body, MAX_CONFIG_XML)
    if _local(root.tag) != "AccessControlPolicy":
        raise errors.MalformedXML("root element must be AccessControlPolicy")
    lists = _children(root, "AccessControlList")
    if len(lists) != 1:
        raise errors.MalformedXML("AccessControlPolicy needs one AccessControlList")
    grants = _children(lists[0], "Grant")
    for grant in grants:
        grantees = _children(grant, "Grantee")
        if len(grantees) != 1:
            raise errors.MalformedXML("each Grant needs one Grantee")
        grantee_id = (_text(grantees[0], "ID") or "").strip()
        permission = (_text(grant, "Permission") or "").strip()
        if grantee_id != OWNER_ID or permission != "FULL_CONTROL":
            raise errors.AccessControlListNotSupported("The bucket does not allow ACLs: only the owner's "
                                                       "FULL_CONTROL grant is supported")
    if not grants:
        raise errors.AccessControlListNotSupported("The bucket does not allow ACLs: the owner keeps FULL_CONTROL")


# ---------------------------------------------------------------------------------------------
# Versioning (buckets are never versioned)


def versioning_configuration() -> bytes:
    """A bucket on which versioning was never enabled: an empty configuration, as AWS answers."""
    return _render(ET.Element("VersioningConfiguration", xmlns=NS))


def parse_versioning(body: bytes) -> str:
    """The Status of a VersioningConfiguration ('' when absent)."""
    root = _parse(body, MAX_CONFIG_XML)
    if _local(root.tag) != "VersioningConfiguration":
        raise errors.MalformedXML("root element must be VersioningConfiguration")
    status = (_text(root, "Status") or "").strip()
    if status and status not in VERSIONING_STATUSES:
        raise errors.MalformedXML("Status must be Enabled or Suspended")
    mfa = (_text(root, "MfaDelete") or "").strip()
    if mfa and mfa not in ("Enabled", "Disabled"):
        raise errors.MalformedXML("MfaDelete must be Enabled or Disabled")
    return status


def check_version_id(query: Mapping[str, str]) -> None:
    """Unversioned buckets: every object is version "null". Another id was never issued here."""
    if "versionId" not in query:
        return
    version = query["versionId"]
    if version == "":
        raise errors.InvalidArgument("Version id cannot be the empty string")
    if version != NULL_VERSION:
        raise errors.InvalidArgument("Invalid version id specified")


def list_versions(listing: Listing, *, bucket: str, prefix: str, delimiter: str, key_marker: str,
                  version_id_marker: str, max_keys: int, encode, url_encoded: bool) -> bytes:
    """ListVersionsResult of an unversioned bucket: each object once, version "null", latest."""
    root = ET.Element("ListVersionsResult", xmlns=NS)
    _sub(root, "Name", bucket)
    _sub(root, "Prefix", encode(prefix))
    _sub(root, "KeyMarker", encode(key_marker))
    _sub(root, "VersionIdMarker", version_id_marker)
    if listing.is_truncated:
        _sub(root, "NextKeyMarker", encode(listing.next_marker))
        _sub(root, "NextVersionIdMarker", NULL_VERSION)
    _sub(root, "MaxKeys", str(max_keys))
    if delimiter:
        _sub(root, "Delimiter", encode(delimiter))
    if url_encoded:
        _sub(root, "EncodingType", "url")
    _sub(root, "IsTruncated", "true" if listing.is_truncated else "false")
    for obj in listing.objects:
        v = _sub(root, "Version")
        _sub(v, "Key", encode(obj.key))
        _sub(v, "VersionId", NULL_VERSION)
        _sub(v, "IsLatest", "true")
        _sub(v, "LastModified", iso8601(obj.mtime_ns))
        _sub(v, "ETag", quote_etag(obj.etag))
        _sub(v, "Size", str(obj.size))
        owner = _sub(v, "Owner")
        _sub(owner, "ID", OWNER_ID)
        _sub(owner, "DisplayName", OWNER_NAME)
        _sub(v, "StorageClass", "STANDARD")
    for cp in listing.common_prefixes:
        _sub(_sub(root, "CommonPrefixes"), "Prefix", encode(cp))
    return _render(root)

