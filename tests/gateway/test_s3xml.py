"""S3 XML rendering/parsing, checked with botocore's own S3 response parser."""
from __future__ import annotations

import botocore.session
import pytest
from botocore.parsers import RestXMLParser

from sealstore import errors
from services.gateway import s3xml, sse

_S3 = botocore.session.get_session().get_service_model("s3")


def parse(operation: str, body: bytes, status: int = 200, headers=None) -> dict:
    shape = _S3.operation_model(operation).output_shape
    return RestXMLParser().parse({"body": body, "headers": headers or {}, "status_code": status}, shape)


def test_error_document_parses_as_botocore_error():
    body = s3xml.error_document("NoSuchKey", "The specified key does not exist.", "/b/k", "REQ123")
    parsed = parse("GetObject", body, status=404)
    assert parsed["Error"] == {"Code": "NoSuchKey", "Message": "The specified key does not exist.", "Resource": "/b/k"}
    assert body.endswith(b"<RequestId>REQ123</RequestId></Error>")


def test_list_buckets_round_trip():
    body = s3xml.list_buckets([("alpha", 1_700_000_000_123_000_000), ("beta", 0)])
    parsed = parse("ListBuckets", body)
    assert [b["Name"] for b in parsed["Buckets"]] == ["alpha", "beta"]
    assert parsed["Buckets"][0]["CreationDate"].year == 2023
    assert parsed["Owner"]["DisplayName"] == s3xml.OWNER_NAME


def _listing(truncated=False):
    objs = [s3xml.ListedObject("a b/ü&<x>", 12, "0123abcd", 1_700_000_000_000_000_000),
            s3xml.ListedObject("plain", 0, '"quoted"', 1_700_000_001_000_000_000)]
    return s3xml.Listing(objs, ["dir/", "sp ace/"], truncated, "sp ace/" if truncated else "")


def test_list_objects_v2_round_trip():
    body = s3xml.list_objects(_listing(True), bucket="bkt", prefix="", delimiter="/", max_keys=4,
                              encode=s3xml.NO_ENCODING, v2=True, start_after="a", continuation_token="tok",
                              next_continuation_token="next")
    parsed = parse("ListObjectsV2", body)
    assert [c["Key"] for c in parsed["Contents"]] == ["a b/ü&<x>", "plain"]
    assert parsed["Contents"][0]["ETag"] == '"0123abcd"' and parsed["Contents"][1]["ETag"] == '"quoted"'
    assert [p["Prefix"] for p in parsed["CommonPrefixes"]] == ["dir/", "sp ace/"]
    assert parsed["KeyCount"] == 4 and parsed["IsTruncated"] is True
    assert parsed["NextContinuationToken"] == "next" and parsed["ContinuationToken"] == "tok"
    assert parsed["StartAfter"] == "a" and parsed["MaxKeys"] == 4 and parsed["Delimiter"] == "/"


def test_list_objects_v2_url_encoding_decodes_in_botocore():
    from services.gateway.s3api import _url_encode
    import botocore.handlers
    body = s3xml.list_objects(_listing(), bucket="bkt", prefix="a b", delimiter="/", max_keys=1000,
                              encode=_url_encode, v2=True)
    assert b"a%20b/%C3%BC%26%3Cx%3E" in body and b"<EncodingType>url</EncodingType>" in body
    parsed = parse("ListObjectsV2", body)
    botocore.handlers.decode_list_object_v2(parsed, context={"encoding_type_auto_set": True})
    assert parsed["Contents"][0]["Key"] == "a b/ü&<x>" and parsed["Prefix"] == "a b"


def test_list_objects_v1_has_marker():
    body = s3xml.list_objects(_listing(True), bucket="bkt", prefix="", delimiter="/", max_keys=4,
                              encode=s3xml.NO_ENCODING, v2=False, marker="m")
    parsed = parse("ListObjects", body)
    assert parsed["Marker"] == "m" and parsed["NextMarker"] == "sp ace/" and parsed["IsTruncated"] is True


VALID = b"""<ServerSideEncryptionConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms</SSEAlgorithm>
<KMSMasterKeyID>my-key</KMSMasterKeyID></ApplyServerSideEncryptionByDefault></Rule>
</ServerSideEncryptionConfiguration>"""


def test_bucket_encryption_valid_and_round_trip():
    rule = s3xml.parse_bucket_encryption(VALID)
    assert rule == s3xml.BucketEncryptionRule("aws:kms", "my-key")
    rendered = s3xml.bucket_encryption(rule)
    assert s3xml.parse_bucket_encryption(rendered) == rule
    parsed = parse("GetBucketEncryption", rendered)
    default = parsed["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert default == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "my-key"}


def test_bucket_encryption_without_namespace_and_aes256():
    body = (b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
            b"<SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
            b"</ServerSideEncryptionConfiguration>")
    assert s3xml.parse_bucket_encryption(body).sse_algorithm == "AES256"


def test_botocore_serialized_put_bucket_encryption_parses():
    from botocore.serialize import RestXMLSerializer
    op = _S3.operation_model("PutBucketEncryption")
    req = RestXMLSerializer().serialize_to_request({"Bucket": "b", "ServerSideEncryptionConfiguration": {"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "arn:aws:kms:k1"},
         "BucketKeyEnabled": True}]}}, op)
    rule = s3xml.parse_bucket_encryption(req["body"])
    assert rule.kms_master_key_id == "arn:aws:kms:k1"
    assert sse.normalize_key_id(rule.kms_master_key_id) == "k1"


@pytest.mark.parametrize("body", [
    VALID.replace(b"</Rule>", b"</Rule><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms"
                  b"</SSEAlgorithm><KMSMasterKeyID>k2</KMSMasterKeyID></ApplyServerSideEncryptionByDefault></Rule>"),
    VALID.replace(b"my-key", b" my-key"),
    VALID.replace(b"aws:kms", b"rot13"),
    VALID.replace(b"<SSEAlgorithm>aws:kms</SSEAlgorithm>", b"<SSEAlgorithm>AES256</SSEAlgorithm>"),
    b"garbage <<<",
    b"<Other/>",
    b"<ServerSideEncryptionConfiguration/>",
])
def test_bucket_encryption_malformed(body):
    with pytest.raises(errors.MalformedXML):
        s3xml.parse_bucket_encryption(body)


def test_bucket_encryption_aws_kms_without_key_means_the_default_key():
    rule = s3xml.parse_bucket_encryption(VALID.replace(b"<KMSMasterKeyID>my-key</KMSMasterKeyID>", b""))
    assert (rule.sse_algorithm, rule.kms_master_key_id) == ("aws:kms", "")


def test_create_bucket_configuration():
    assert s3xml.parse_create_bucket(b"") == ""
    assert s3xml.parse_create_bucket(
        b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b'<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>') == "eu-west-1"
    with pytest.raises(errors.MalformedXML):
        s3xml.parse_create_bucket(b"<nope")


def test_delete_objects_round_trip():
    keys, quiet = s3xml.parse_delete_objects(
        b"<Delete><Object><Key>a</Key></Object><Object><Key>b c</Key></Object><Quiet>false</Quiet></Delete>")
    assert keys == ["a", "b c"] and not quiet
    parsed = parse("DeleteObjects", s3xml.delete_result(["a"], [("b c", "SlowDown", "later")], quiet))
    assert parsed["Deleted"] == [{"Key": "a"}]
    assert parsed["Errors"] == [{"Key": "b c", "Code": "SlowDown", "Message": "later"}]


