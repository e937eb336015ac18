"""S3 XML documents: rendering responses and parsing request bodies (xml.etree only).

Everything here is pure: plain values in, bytes out (or bytes in, plain values out).
Validation that needs the kms (does the key exist?) happens in the caller.
"""
from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from xml.parsers import expat
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from sealstore import errors

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_XML_BODY = 16 << 20
"""Hard cap of any XML body parsed here; callers refuse far smaller bodies before reading them."""
MAX_CONFIG_XML = 64 << 10
"""Bucket configuration documents (CreateBucketConfiguration, ServerSideEncryptionConfiguration) are tiny."""
OWNER_ID = "02d6176db174dc93cb1b899f7c6078f08654445fe8cf1b6ce98d8855f66bdbf4"
OWNER_NAME = "sealstore"


def _render(root: ET.Element) -> bytes:
    return _DECL + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def iso8601(ns: int) -> str:
    """S3's timestamp format in listings: 2026-01-02T03:04:05.678Z."""
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def error_document(code: str, message: str, resource: str, request_id: str) -> bytes:
    root = ET.Element("Error")
    _sub(root, "Code", code)
    _sub(root, "Message", message)
    _sub(root, "Resource", resource)
    _sub(root, "RequestId", request_id)
    return _render(root)


def list_buckets(buckets: Iterable[tuple[str, int]]) -> bytes:
    """`buckets`: (name, created_ns) pairs."""
    root = ET.Element("ListAllMyBucketsResult", xmlns=NS)
    owner = _sub(root, "Owner")
    _sub(owner, "ID", OWNER_ID)
    _sub(owner, "DisplayName", OWNER_NAME)
    container = _sub(root, "Buckets")
    for name, created_ns in buckets:
        b = _sub(container, "Bucket")
        _sub(b, "Name", name)
        _sub(b, "CreationDate", iso8601(created_ns))
    return _render(root)


def location_constraint(region: str = "") -> bytes:
    root = ET.Element("LocationConstraint", xmlns=NS)
    if region:
        root.text = region
    return _render(root)


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True)
class Listing:
    """One page of a bucket listing, already split into objects and common prefixes."""

    objects: Sequence[ListedObject]
    common_prefixes: Sequence[str]
    is_truncated: bool
    next_marker: str  # the key or prefix after which the next page starts ('' when not truncated)


def list_objects(listing: Listing, *, bucket: str, prefix: str, delimiter: str, max_keys: int,
                 encode, v2: bool, start_after: str = "", continuation_token: str = "",
                 next_continuation_token: str = "", marker: str = "") -> bytes:
    """ListBucketResult for ListObjectsV2 (`v2`) or V1; `encode` applies encoding-type=url (or not)."""
    root = ET.Element("ListBucketResult", xmlns=NS)
    _sub(root, "Name", bucket)
    _sub(root, "Prefix", encode(prefix))
    if v2:
        if start_after:
            _sub(root, "StartAfter", encode(start_after))
        if continuation_token:
            _sub(root, "ContinuationToken", continuation_token)
        if next_continuation_token:
            _sub(root, "NextContinuationToken", next_continuation_token)
        _sub(root, "KeyCount", str(len(listing.objects) + len(listing.common_prefixes)))
    else:
        _sub(root, "Marker", encode(marker))
        if listing.is_truncated and delimiter:
            _sub(root, "NextMarker", encode(listing.next_marker))
    _sub(root, "MaxKeys", str(max_keys))
    if delimiter:
        _sub(root, "Delimiter", encode(delimiter))
    if encode is not _identity:
        _sub(root, "EncodingType", "url")
    _sub(root, "IsTruncated", "true" if listing.is_truncated else "false")
    for obj in listing.objects:
        c = _sub(root, "Contents")
        _sub(c, "Key", encode(obj.key))
        _sub(c, "LastModified", iso8601(obj.mtime_ns))
        _sub(c, "ETag", quote_etag(obj.etag))
        _sub(c, "Size", str(obj.size))
        if not v2:
            owner = _sub(c, "Owner")
            _sub(owner, "ID", OWNER_ID)
            _sub(owner, "DisplayName", OWNER_NAME)
        _sub(c, "StorageClass", "STANDARD")
    for cp in listing.common_prefixes:
        _sub(_sub(root, "CommonPrefixes"), "Prefix", encode(cp))
    return _render(root)


def _identity(text: str) -> str:
    return text


NO_ENCODING = _identity


# ---------------------------------------------------------------------------------------------
# Request bodies


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Forbidden(Exception):
    pass


def _refuse_dtd(*_args) -> None:
    raise _Forbidden("DTDs and entity declarations are not allowed in S3 request bodies")


def _parse(body: bytes, limit: int = MAX_XML_BODY) -> ET.Element:
    """Parses a request body with expat, refusing any DTD: S3 documents never need one, and
    entity declarations are how XML bombs and external-entity reads start."""
    if len(body) > limit:
        raise errors.MalformedXML(f"XML body larger than {limit} bytes")
    # ElementTree's C parser hides its expat handlers, so a plain expat pass looks for a DTD first.
    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = _refuse_dtd
    scan.EntityDeclHandler = _refuse_dtd
    scan.UnparsedEntityDeclHandler = _refuse_dtd
    scan.ExternalEntityRefHandler = _refuse_dtd
    try:
        scan.Parse(body, True)
        return ET.fromstring(body)
    except _Forbidden as e:
        raise errors.MalformedXML(str(e)) from None
    except (expat.ExpatError, ET.ParseError, ValueError, UnicodeError, RecursionError):
        raise errors.MalformedXML() from None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element, name: str) -> str | None:
    found = _children(el, name)
    if len(found) > 1:
        raise errors.MalformedXML(f"more than one {name}")
    return None if not found else (found[0].text or "")


def parse_create_bucket(body: bytes) -> str:
    """CreateBucketConfiguration's LocationConstraint ('' when absent or the body is empty)."""
    if not body.strip():
        return ""
    root = _parse(body, MAX_CONFIG_XML)
    if _local(root.tag) != "CreateBucketConfiguration":
        raise errors.MalformedXML()
    return (_text(root, "LocationConstraint") or "").strip()


@dataclass(frozen=True)
class BucketEncryptionRule:
    sse_algorithm: str
    kms_master_key_id: str


def parse_bucket_encryption(body: bytes) -> BucketEncryptionRule:
    """ServerSideEncryptionConfiguration, validated as MinIO does (exactly one rule), except that
    aws:kms may name no key, as AWS allows (the deployment's default KMS key).

    Returns the rule as written; AES256 is returned too (the caller decides what it supports).
    """
    root = _parse(body, MAX_CONFIG_XML)
    if _local(root.tag) != "ServerSideEncryptionConfiguration":
        raise errors.MalformedXML("root element must be ServerSideEncryptionConfiguration")
    rules = _children(root, "Rule")
    if len(rules) != 1:
        raise errors.MalformedXML("exactly one Rule is required")
    defaults = _children(rules[0], "ApplyServerSideEncryptionByDefault")
    if len(defaults) != 1:
        raise errors.MalformedXML("the Rule needs one ApplyServerSideEncryptionByDefault")
    algorithm = (_text(defaults[0], "SSEAlgorithm") or "").strip()
    key_id = _text(defaults[0], "KMSMasterKeyID")
    if algorithm == "AES256":
        if key_id is not None:
            raise errors.MalformedXML("AES256 must not name a KMSMasterKeyID")
        return BucketEncryptionRule("AES256", "")
    if algorithm == "aws:kms":
        if not key_id:
            return BucketEncryptionRule("aws:kms", "")  # as AWS: the deployment's default KMS key
        if key_id != key_id.strip():
            raise errors.MalformedXML("KMSMasterKeyID must not have leading or trailing spaces")
        return BucketEncryptionRule("aws:kms", key_id)
    raise errors.MalformedXML(f"unknown SSEAlgorithm {algorithm!r}")


def bucket_encryption(rule: BucketEncryptionRule) -> bytes:
    root = ET.Element("ServerSideEncryptionConfiguration", xmlns=NS)
    default = _sub(_sub(root, "Rule"), "ApplyServerSideEncryptionByDefault")
    _sub(default, "SSEAlgorithm", rule.sse_algorithm)
    if rule.kms_master_key_id:
        _sub(default, "KMSMasterKeyID", rule.kms_master_key_id)
    return _render(root)


def parse_delete_objects(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects request: the keys (at most 1000) and whether Quiet was set."""
    objects, quiet = parse_delete_object_versions(body)
    return [key for key, _ in objects], quiet


def parse_delete_object_versions(body: bytes) -> tuple[list[tuple[str, str | None]], bool]:
    """DeleteObjects request: (key, VersionId or None) of each object (at most 1000), and Quiet."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise errors.MalformedXML()
    objects = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise errors.MalformedXML("Object without Key")
        objects.append((key, _text(obj, "VersionId")))
    if not objects or len(objects) > 1000:
        raise errors.MalformedXML("between 1 and 1000 objects per request")
    quiet = (_text(root, "Quiet") or "").strip().lower() == "true"
    return objects, quiet


def delete_result(deleted: Iterable[str], failed: Iterable[tuple[str, str, str]], quiet: bool) -> bytes:
    """`failed`: (key, S3 code, message)."""
    root = ET.Element("DeleteResult", xmlns=NS)
    if not quiet:
        for key in deleted:
            _sub(_sub(root, "Deleted"), "Key", key)
    for key, code, message in failed:
        e = _sub(root, "Error")
        _sub(e, "Key", key)
        _sub(e, "Code", code)
        _sub(e, "Message", message)
    return _render(root)


# ---------------------------------------------------------------------------------------------
# Multipart upload and copy documents

MAX_COMPLETE_XML = 4 << 20
"""CompleteMultipartUpload names up to 10,000 parts (~80 bytes each, more with checksums)."""


def _owner(parent: ET.Element, tag: str) -> None:
    who = _sub(parent, tag)
    _sub(who, "ID", OWNER_ID)
    _sub(who, "DisplayName", OWNER_NAME)


def initiate_multipart_upload(bucket: str, key: str, upload_id: str) -> bytes:
    root = ET.Element("InitiateMultipartUploadResult", xmlns=NS)
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "UploadId", upload_id)
    return _render(root)


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str  # without quotes


def parse_complete_multipart(body: bytes, max_part_number: int = 10_000) -> list[CompletedPart]:
    """The parts a CompleteMultipartUpload names, in the order given (the caller checks the
    order, AWS's InvalidPartOrder). No parts, a part without a number or ETag, or a number
    that is not an integer: MalformedXML, as AWS."""
    root = _parse(body, MAX_COMPLETE_XML)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise errors.MalformedXML("root element must be CompleteMultipartUpload")
    parts = []
    for el in _children(root, "Part"):
        raw_number, etag = _text(el, "PartNumber"), _text(el, "ETag")
        if raw_number is None or etag is None:
            raise errors.MalformedXML("every Part needs a PartNumber and an ETag")
        raw_number = raw_number.strip()
        if not raw_number.isascii() or not raw_number.isdigit() or len(raw_number) > 6:
            raise errors.MalformedXML("PartNumber must be an integer")
        number = int(raw_number)
        if not 1 <= number <= max_part_number:
            raise errors.InvalidArgument(f"Part number must be an integer between 1 and {max_part_number}, inclusive")
        parts.append(CompletedPart(number, etag.strip().strip('"')))
    if not parts:
        raise errors.MalformedXML("CompleteMultipartUpload names no part")
    return parts


def complete_multipart_result(location: str, bucket: str, key: str, etag: str) -> bytes:
    root = ET.Element("CompleteMultipartUploadResult", xmlns=NS)
    _sub(root, "Location", location)
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "ETag", quote_etag(etag))
    return _render(root)


@dataclass(frozen=True)
class ListedPart:
    number: int
    etag: str
    size: int
    mtime_ns: int


def list_parts(*, bucket: str, key: str, upload_id: str, part_number_marker: int, next_marker: int,
               max_parts: int, is_truncated: bool, parts: Iterable[ListedPart]) -> bytes:
    root = ET.Element("ListPartsResult", xmlns=NS)
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "UploadId", upload_id)
    _owner(root, "Initiator")
    _owner(root, "Owner")
    _sub(root, "StorageClass", "STANDARD")
    _sub(root, "PartNumberMarker", str(part_number_marker))
    _sub(root, "NextPartNumberMarker", str(next_marker))
    _sub(root, "MaxParts", str(max_parts))
    _sub(root, "IsTruncated", "true" if is_truncated else "false")
    for part in parts:
        p = _sub(root, "Part")
        _sub(p, "PartNumber", str(part.number))
        _sub(p, "LastModified", iso8601(part.mtime_ns))
        _sub(p, "ETag", quote_etag(part.etag))
        _sub(p, "Size", str(part.size))
    return _render(root)


@dataclass(frozen=True)
class ListedUpload:
    key: str
    upload_id: str
    initiated_ns: int


@dataclass(frozen=True)
class UploadListing:
    uploads: Sequence[ListedUpload]
    common_prefixes: Sequence[str]
    is_truncated: bool
    next_key_marker: str
    next_upload_id_marker: str


def list_multipart_uploads(listing: UploadListing, *, bucket: str, prefix: str, delimiter: str,
                           key_marker: str, upload_id_marker: str, max_uploads: int, encode) -> bytes:
    root = ET.Element("ListMultipartUploadsResult", xmlns=NS)
    _sub(root, "Bucket", bucket)
    _sub(root, "KeyMarker", encode(key_marker))
    _sub(root, "UploadIdMarker", upload_id_marker)
    _sub(root, "NextKeyMarker", encode(listing.next_key_marker))
    _sub(root, "NextUploadIdMarker", listing.next_upload_id_marker)
    _sub(root, "Prefix", encode(prefix))
    if delimiter:
        _sub(root, "Delimiter", encode(delimiter))
    _sub(root, "MaxUploads", str(max_uploads))
    if encode is not _identity:
        _sub(root, "EncodingType", "url")
    _sub(root, "IsTruncated", "true" if listing.is_truncated else "false")
    for upload in listing.uploads:
        u = _sub(root, "Upload")
        _sub(u, "Key", encode(upload.key))
        _sub(u, "UploadId", upload.upload_id)
        _owner(u, "Initiator")
        _owner(u, "Owner")
        _sub(u, "StorageClass", "STANDARD")
        _sub(u, "Initiated", iso8601(upload.initiated_ns))
    for cp in listing.common_prefixes:
        _sub(_sub(root, "CommonPrefixes"), "Prefix", encode(cp))
    return _render(root)


def copy_object_result(etag: str, mtime_ns: int, *, part: bool = False) -> bytes:
    """CopyObjectResult, or CopyPartResult for UploadPartCopy (`part`)."""
    root = ET.Element("CopyPartResult" if part else "CopyObjectResult", xmlns=NS)
    _sub(root, "LastModified", iso8601(mtime_ns))
    _sub(root, "ETag", quote_etag(etag))
    return _render(root)


def parse_max(q: Mapping[str, str], name: str, default: int = 1000, cap: int = 1000) -> int:
    """A page size from the query (max-keys, max-parts, max-uploads): a decimal integer, capped as AWS."""
    raw = q.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise errors.InvalidArgument(f"Provided {name} not an integer or within integer range")
    return min(int(raw), cap)
