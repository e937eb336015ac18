"""sealstore/multipart.py: AWS's part rules and the multipart ETag, against values computed by hand."""
import hashlib

import pytest

from sealstore import errors, multipart


def test_multipart_etag_is_md5_of_the_binary_part_md5s_and_the_count():
    parts = [hashlib.md5(b"a" * 10).hexdigest(), hashlib.md5(b"b").hexdigest()]
    expected = hashlib.md5(bytes.fromhex(parts[0]) + bytes.fromhex(parts[1])).hexdigest() + "-2"
    assert multipart.multipart_etag(parts) == expected


def test_multipart_etag_of_non_md5_part_etags_is_deterministic_and_distinct():
    a = multipart.multipart_etag(["x" * 40, "y" * 40])
    assert a == multipart.multipart_etag(["x" * 40, "y" * 40])
    assert a != multipart.multipart_etag(["y" * 40, "x" * 40])
    assert a.endswith("-2")


@pytest.mark.parametrize("raw", ["1", "10000", "00042"])
def test_part_numbers_in_range(raw):
    assert multipart.parse_part_number(raw) == int(raw)


@pytest.mark.parametrize("raw", [None, "", "0", "10001", "-1", "1.5", "abc", "१", "9" * 40])
def test_part_numbers_out_of_range_are_invalid_argument(raw):
    with pytest.raises(errors.InvalidArgument):
        multipart.parse_part_number(raw)


@pytest.mark.parametrize("upload_id", ["", "../x", "A" * 32, "0" * 31, "0" * 33, "g" * 32])
def test_foreign_upload_ids_are_no_such_upload(upload_id):
    with pytest.raises(errors.NoSuchUpload):
        multipart.validate_upload_id(upload_id)


def test_keys_of_one_upload_share_a_prefix_no_other_upload_or_bucket_has():
    bucket, upload = "b1", "0" * 32
    key = multipart.part_key(bucket, upload, 7)
    assert key.startswith(multipart.parts_prefix(bucket, upload))
    assert not key.startswith(multipart.parts_prefix("b", upload))
    assert multipart.part_number_of(key) == 7
    assert multipart.record_key(bucket, upload).startswith(multipart.uploads_prefix(bucket))
    assert not multipart.record_key(bucket, upload).startswith(multipart.parts_prefix(bucket, upload))
