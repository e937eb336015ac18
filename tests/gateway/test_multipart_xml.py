"""Multipart and copy documents and request validation, checked with botocore's own S3 parser
(what clients will make of our answers) and against AWS's error codes."""
from __future__ import annotations

import email.utils

import botocore.session
import pytest
from botocore.parsers import RestXMLParser

from sealstore import errors, multipart as rules
from sealstore.v1 import types_pb2
from services.gateway import copy, multipart, s3xml
from services.gateway.s3api import _url_encode

_S3 = botocore.session.get_session().get_service_model("s3")
T0 = 1_700_000_000_000_000_000
MiB = 1024 * 1024


def parse(operation: str, body: bytes, headers=None) -> dict:
    shape = _S3.operation_model(operation).output_shape
    return RestXMLParser().parse({"body": body, "headers": headers or {}, "status_code": 200}, shape)


def complete_body(parts, namespace=True) -> bytes:
    ns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if namespace else ""
    inner = "".join(f"<Part><ETag>{etag}</ETag><PartNumber>{n}</PartNumber></Part>" for n, etag in parts)
    return f"<CompleteMultipartUpload{ns}>{inner}</CompleteMultipartUpload>".encode()


# -- documents -------------------------------------------------------------------------------

def test_initiate_result_parses_in_botocore():
    parsed = parse("CreateMultipartUpload", s3xml.initiate_multipart_upload("bkt", "a b/ü&<x>", "ab" * 16))
    assert parsed["Bucket"] == "bkt" and parsed["Key"] == "a b/ü&<x>" and parsed["UploadId"] == "ab" * 16


def test_complete_request_as_botocore_serializes_it():
    from botocore.serialize import create_serializer
    request = create_serializer("rest-xml").serialize_to_request(
        {"Bucket": "b", "Key": "k", "UploadId": "u",
         "MultipartUpload": {"Parts": [{"ETag": '"aa"', "PartNumber": 1}, {"ETag": '"bb-2"', "PartNumber": 3}]}},
        _S3.operation_model("CompleteMultipartUpload"))
    parts = s3xml.parse_complete_multipart(request["body"])
    assert parts == [s3xml.CompletedPart(1, "aa"), s3xml.CompletedPart(3, "bb-2")]


@pytest.mark.parametrize("body, error", [
    (complete_body([]), errors.MalformedXML),
    (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
     errors.MalformedXML),
    (b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>", errors.MalformedXML),
    (complete_body([("x1", '"e"')]), errors.MalformedXML),
    (complete_body([("-1", '"e"')]), errors.MalformedXML),
    (complete_body([(0, '"e"')]), errors.InvalidArgument),
    (complete_body([(10001, '"e"')]), errors.InvalidArgument),
    (b"<Other/>", errors.MalformedXML),
    (b"<CompleteMultipartUpload>", errors.MalformedXML),
    (b'<!DOCTYPE x [<!ENTITY a "b">]><CompleteMultipartUpload/>', errors.MalformedXML),
])
def test_complete_request_refused(body, error):
    with pytest.raises(error):
        s3xml.parse_complete_multipart(body)


def test_complete_request_of_ten_thousand_parts_fits():
    body = complete_body([(n, f'"{n:032x}"') for n in range(1, 10_001)])
    assert len(body) < s3xml.MAX_COMPLETE_XML
    parts = s3xml.parse_complete_multipart(body)
    assert len(parts) == 10_000 and parts[-1] == s3xml.CompletedPart(10_000, f"{10_000:032x}")


def test_complete_result_parses_in_botocore():
    body = s3xml.complete_multipart_result("http://h/b/k%20x", "b", "k x", "abc-2")
    parsed = parse("CompleteMultipartUpload", body)
    assert parsed["Location"] == "http://h/b/k%20x" and parsed["Key"] == "k x" and parsed["ETag"] == '"abc-2"'


def test_list_parts_parses_in_botocore():
    body = s3xml.list_parts(bucket="b", key="k", upload_id="u" * 32, part_number_marker=2, next_marker=4,
                            max_parts=2, is_truncated=True,
                            parts=[s3xml.ListedPart(3, "e3", 5 * MiB, T0), s3xml.ListedPart(4, '"e4"', 7, T0)])
    parsed = parse("ListParts", body)
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parsed["Parts"]] == [(3, '"e3"', 5 * MiB), (4, '"e4"', 7)]
    assert parsed["PartNumberMarker"] == 2 and parsed["NextPartNumberMarker"] == 4
    assert parsed["MaxParts"] == 2 and parsed["IsTruncated"] is True and parsed["UploadId"] == "u" * 32
    assert parsed["Parts"][0]["LastModified"].year == 2023


def test_list_uploads_parses_in_botocore_with_url_encoding():
    listing = s3xml.UploadListing([s3xml.ListedUpload("a b", "1" * 32, T0)], ["dir/ü/"], True, "dir/ü/", "")
    body = s3xml.list_multipart_uploads(listing, bucket="b", prefix="", delimiter="/", key_marker="a",
                                        upload_id_marker="", max_uploads=2, encode=_url_encode)
    assert b"<Key>a%20b</Key>" in body and b"<EncodingType>url</EncodingType>" in body
    parsed = parse("ListMultipartUploads", body)
    assert parsed["Uploads"][0]["UploadId"] == "1" * 32 and parsed["IsTruncated"] is True
    assert parsed["MaxUploads"] == 2 and parsed["Delimiter"] == "/"
    assert parsed["Uploads"][0]["Initiated"].year == 2023


def test_copy_results_parse_in_botocore():
    parsed = parse("CopyObject", s3xml.copy_object_result("abc", T0))
    assert parsed["CopyObjectResult"]["ETag"] == '"abc"'
    parsed = parse("UploadPartCopy", s3xml.copy_object_result("def", T0, part=True))
    assert parsed["CopyPartResult"]["ETag"] == '"def"'
    assert parsed["CopyPartResult"]["LastModified"].year == 2023


# -- Complete's rules --------------------------------------------------------------------------

def test_part_order_must_ascend_strictly():
    multipart.check_part_order([s3xml.CompletedPart(1, "a"), s3xml.CompletedPart(5, "b")])
    for numbers in ([2, 1], [1, 1], [1, 3, 2]):
        with pytest.raises(errors.InvalidPartOrder):
            multipart.check_part_order([s3xml.CompletedPart(n, "e") for n in numbers])


def test_every_part_but_the_last_is_at_least_5_mib():
    multipart.check_part_sizes([5 * MiB, 5 * MiB, 1])
    multipart.check_part_sizes([1])  # a single part may be tiny
    with pytest.raises(errors.EntityTooSmall):
        multipart.check_part_sizes([5 * MiB - 1, 5 * MiB])


def test_completed_meta_is_built_from_the_record_and_the_parts():
    record = types_pb2.ObjectMeta(
        bucket=rules.SYSTEM_BUCKET, key=rules.record_key("b", "f" * 32), data_id="rec", content_type="text/x",
        user_metadata={"color": "red"}, inline=True, inline_shard=b"x", shard_index=3,
        upload=types_pb2.MultipartUpload(bucket="b", key="k", upload_id="f" * 32, initiated_ns=T0),
        encryption=types_pb2.EncryptionEnvelope(kms_key_name="key1", domain="SSE-KMS"))
    parts = [types_pb2.ObjectPart(number=1, data_id="p1", size=5 * MiB, stored_size=5 * MiB + 10, etag="0" * 32),
             types_pb2.ObjectPart(number=4, data_id="p4", size=3, stored_size=20, etag="1" * 32)]
    meta = multipart.completed_meta(record, "b", "k", "f" * 32, parts, T0 + 5)
    assert (meta.bucket, meta.key, meta.data_id, meta.mtime_ns) == ("b", "k", "f" * 32, T0 + 5)
    assert meta.size == 5 * MiB + 3 and meta.stored_size == 5 * MiB + 30
    assert meta.etag == rules.multipart_etag(["0" * 32, "1" * 32]) and meta.etag.endswith("-2")
    assert [p.number for p in meta.parts] == [1, 4]
    assert meta.encryption.kms_key_name == "key1" and meta.content_type == "text/x"
    assert dict(meta.user_metadata) == {"color": "red"}
    assert not meta.HasField("upload") and not meta.inline and not meta.inline_shard and meta.shard_index == 0


# -- ListMultipartUploads paging ---------------------------------------------------------------

def _uploads():
    return [s3xml.ListedUpload("b/x", "c" * 32, T0 + 2), s3xml.ListedUpload("a", "9" * 32, T0 + 1),
            s3xml.ListedUpload("a", "1" * 32, T0 + 3), s3xml.ListedUpload("b/y", "d" * 32, T0),
            s3xml.ListedUpload("c", "e" * 32, T0)]


def _page(**kw):
    args = dict(prefix="", delimiter="", key_marker="", upload_id_marker="", max_uploads=1000)
    args.update(kw)
    return multipart.page_of_uploads(_uploads(), **args)


def test_uploads_sorted_by_key_then_initiation():
    page = _page()
    assert [(u.key, u.upload_id[0]) for u in page.uploads] == [("a", "9"), ("a", "1"), ("b/x", "c"), ("b/y", "d"),
                                                                ("c", "e")]
    assert not page.is_truncated


def test_uploads_paging_with_markers_visits_each_once():
    seen, key_marker, id_marker = [], "", ""
    for _ in range(10):
        page = _page(key_marker=key_marker, upload_id_marker=id_marker, max_uploads=2)
        seen += [(u.key, u.upload_id) for u in page.uploads]
        if not page.is_truncated:
            break
        key_marker, id_marker = page.next_key_marker, page.next_upload_id_marker
    assert seen == [(u.key, u.upload_id) for u in _page().uploads]


def test_uploads_prefix_and_delimiter():
    page = _page(delimiter="/")
    assert [u.key for u in page.uploads] == ["a", "a", "c"] and page.common_prefixes == ["b/"]
    page = _page(prefix="b/", delimiter="/")
    assert [u.key for u in page.uploads] == ["b/x", "b/y"] and page.common_prefixes == []
    page = _page(delimiter="/", max_uploads=3)
    assert page.is_truncated and page.next_key_marker == "b/" and page.next_upload_id_marker == ""
    rest = _page(delimiter="/", key_marker="b/")
    assert [u.key for u in rest.uploads] == ["c"] and not rest.common_prefixes


def test_max_uploads_zero_lists_nothing():
    page = _page(max_uploads=0)
    assert page.uploads == [] and page.common_prefixes == [] and page.is_truncated


def test_key_marker_alone_skips_that_key():
    assert [u.key for u in _page(key_marker="a").uploads] == ["b/x", "b/y", "c"]


@pytest.mark.parametrize("raw", ["-1", "x", "1.5", "99999999999"])
def test_max_uploads_and_parts_must_be_integers(raw):
    with pytest.raises(errors.InvalidArgument):
        s3xml.parse_max({"max-uploads": raw}, "max-uploads")


def test_max_is_capped_at_1000():
    assert s3xml.parse_max({"max-parts": "5000"}, "max-parts") == 1000
    assert s3xml.parse_max({}, "max-parts") == 1000


# -- GET/HEAD ?partNumber ----------------------------------------------------------------------

def _multipart_meta():
    return types_pb2.ObjectMeta(size=5 * MiB + 5 * MiB + 10, parts=[
        types_pb2.ObjectPart(number=1, size=5 * MiB), types_pb2.ObjectPart(number=2, size=5 * MiB),
        types_pb2.ObjectPart(number=3, size=10)])


def test_part_view_of_a_multipart_object():
    status, extra, length = multipart.part_view(_multipart_meta(), 2)
    assert status == 206 and length == 5 * MiB
    assert extra == {"x-amz-mp-parts-count": "3", "Content-Range": f"bytes {5 * MiB}-{10 * MiB - 1}/{10 * MiB + 10}"}
    assert multipart.part_view(_multipart_meta(), 3)[1]["Content-Range"] == f"bytes {10 * MiB}-{10 * MiB + 9}/{10 * MiB + 10}"
    with pytest.raises(errors.InvalidPartNumber):
        multipart.part_view(_multipart_meta(), 4)


def test_part_one_of_a_plain_object_is_all_of_it():
    assert multipart.part_view(types_pb2.ObjectMeta(size=42), 1) == (200, {}, 42)
    with pytest.raises(errors.InvalidPartNumber):
        multipart.part_view(types_pb2.ObjectMeta(size=42), 2)


def test_part_number_query_rules():
    assert multipart.part_number_query({}, {}) is None
    assert multipart.part_number_query({"partNumber": "7"}, {}) == 7
    with pytest.raises(errors.InvalidRequest):
        multipart.part_number_query({"partNumber": "1"}, {"Range": "bytes=0-1"})
    for bad in ("0", "10001", "x", ""):
        with pytest.raises(errors.InvalidArgument):
            multipart.part_number_query({"partNumber": bad}, {})


# -- copy requests -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("/src/dir/a%20b%2Bc.txt", ("src", "dir/a b+c.txt")),
    ("src/k", ("src", "k")),
    ("src/k?versionId=null", ("src", "k")),
    ("/src/%E2%82%AC%3Fq", ("src", "€?q")),
])
def test_copy_source_forms(raw, expected):
    assert copy.parse_copy_source(raw) == expected


@pytest.mark.parametrize("raw", ["", "/", "bucket", "/bucket/", "src/k?versionId=3HL4kqtJlcpXroDTDmJ"])
def test_copy_source_refused(raw):
    with pytest.raises(errors.InvalidArgument):
        copy.parse_copy_source(raw)


def test_directives():
    assert copy.parse_directive({}, "x-amz-metadata-directive") is False
    assert copy.parse_directive({"x-amz-metadata-directive": "COPY"}, "x-amz-metadata-directive") is False
    assert copy.parse_directive({"x-amz-metadata-directive": "REPLACE"}, "x-amz-metadata-directive") is True
    with pytest.raises(errors.InvalidArgument):
        copy.parse_directive({"x-amz-tagging-directive": "replace-all"}, "x-amz-tagging-directive")


def test_copy_range_forms():
    assert copy.parse_copy_range(None) is None
    assert copy.parse_copy_range("bytes=0-9") == (0, 9)
    for bad in ("bytes=5-4", "bytes=-5", "bytes=5-", "bytes=0-1,3-4", "0-9"):
        with pytest.raises(errors.InvalidArgument):
            copy.parse_copy_range(bad)
    copy.check_range_fits((0, 9), 10)
    with pytest.raises(errors.InvalidArgument):
        copy.check_range_fits((0, 10), 10)


def test_failed_source_conditions_are_412_never_304():
    source = types_pb2.ObjectMeta(etag="abc", mtime_ns=T0)
    later = email.utils.formatdate(T0 / 1e9 + 60, usegmt=True)
    earlier = email.utils.formatdate(T0 / 1e9 - 60, usegmt=True)
    passing = [{"x-amz-copy-source-if-match": '"abc"'}, {"x-amz-copy-source-if-none-match": '"other"'},
               {"x-amz-copy-source-if-modified-since": earlier}, {"x-amz-copy-source-if-unmodified-since": later},
               # AWS: if-match true wins over if-unmodified-since false
               {"x-amz-copy-source-if-match": '"abc"', "x-amz-copy-source-if-unmodified-since": earlier}]
    for headers in passing:
        copy.check_source_conditions(copy.source_conditions(headers), source, "/b/k")
    failing = [{"x-amz-copy-source-if-match": '"other"'}, {"x-amz-copy-source-if-none-match": '"abc"'},
               {"x-amz-copy-source-if-modified-since": later}, {"x-amz-copy-source-if-unmodified-since": earlier}]
    for headers in failing:
        with pytest.raises(errors.PreconditionFailed):
            copy.check_source_conditions(copy.source_conditions(headers), source, "/b/k")
