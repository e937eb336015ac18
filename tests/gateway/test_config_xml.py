"""Tagging, ACL, versioning and ListObjectVersions XML (services/gateway/config_xml.py)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from sealstore import errors
from services.gateway import config_xml
from services.gateway.s3xml import NS, OWNER_ID, Listing, ListedObject

N = {"s3": NS}


def _tagging(pairs) -> bytes:
    tags = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f'<Tagging xmlns="{NS}"><TagSet>{tags}</TagSet></Tagging>'.encode()


def test_tagging_round_trip():
    tags = {"project": "blue sky", "owner": "ünïcode", "empty": "", "sym": "a+b-c=d._:/@"}
    rendered = config_xml.tagging(tags)
    assert config_xml.parse_tagging(rendered) == tags
    root = ET.fromstring(rendered)
    assert [t.findtext("s3:Key", namespaces=N) for t in root.findall("s3:TagSet/s3:Tag", N)] == sorted(tags)


@pytest.mark.parametrize("pairs, error", [
    ([("a", "1"), ("a", "2")], errors.InvalidTag),
    ([("k" * 129, "v")], errors.InvalidTag),
    ([("k", "v" * 257)], errors.InvalidTag),
    ([("", "v")], errors.InvalidTag),
    ([("aws:system", "v")], errors.InvalidTag),
    ([("bad<char>"[:3] + "#", "v")], errors.InvalidTag),
    ([(f"k{i}", "v") for i in range(11)], errors.BadRequest),
])
def test_tag_rules(pairs, error):
    with pytest.raises(error):
        config_xml.validate_tags(pairs)


def test_tag_limits_at_the_edge_pass():
    config_xml.validate_tags([("k" * 128, "v" * 256)])
    config_xml.validate_tags([(f"k{i}", "v") for i in range(10)])
    config_xml.validate_tags([(f"k{i}", "v") for i in range(50)], bucket=True)
    with pytest.raises(errors.BadRequest):
        config_xml.validate_tags([(f"k{i}", "v") for i in range(51)], bucket=True)


@pytest.mark.parametrize("body", [
    b"", b"<Tagging/>", b"<Tagging><TagSet><Tag><Key>a</Key></Tag></TagSet></Tagging>",
    b"<Other><TagSet/></Other>", b"<Tagging><TagSet><Bogus/></TagSet></Tagging>",
    b'<!DOCTYPE x [<!ENTITY e "boom">]><Tagging><TagSet/></Tagging>', b"<Tagging><TagSet>",
])
def test_malformed_tagging_xml(body):
    with pytest.raises(errors.MalformedXML):
        config_xml.parse_tagging(body)


def test_tagging_header():
    assert config_xml.parse_tagging_header("a=1&b=two%20words&c=") == {"a": "1", "b": "two words", "c": ""}
    with pytest.raises(errors.InvalidTag):
        config_xml.parse_tagging_header("a=1&a=2")
    with pytest.raises(errors.BadRequest):
        config_xml.parse_tagging_header("&".join(f"k{i}=v" for i in range(11)))


def test_acl_document_and_checks():
    root = ET.fromstring(config_xml.access_control_policy())
    grant = root.find("s3:AccessControlList/s3:Grant", N)
    assert grant.findtext("s3:Permission", namespaces=N) == "FULL_CONTROL"
    assert grant.findtext("s3:Grantee/s3:ID", namespaces=N) == OWNER_ID
    config_xml.check_acl_body(config_xml.access_control_policy())  # the owner-only document is accepted back
    assert config_xml.check_acl_headers({"x-amz-acl": "private"}) is True
    assert config_xml.check_acl_headers({"x-amz-acl": "bucket-owner-full-control"}) is True
    assert config_xml.check_acl_headers({}) is False
    for headers in ({"x-amz-acl": "public-read"}, {"x-amz-acl": "authenticated-read"},
                    {"x-amz-grant-read": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'}):
        with pytest.raises(errors.AccessControlListNotSupported):
            config_xml.check_acl_headers(headers)
    public = config_xml.access_control_policy().replace(b"FULL_CONTROL", b"READ")
    with pytest.raises(errors.AccessControlListNotSupported):
        config_xml.check_acl_body(public)
    with pytest.raises(errors.MalformedXML):
        config_xml.check_acl_body(b"<AccessControlPolicy>")


def test_versioning():
    root = ET.fromstring(config_xml.versioning_configuration())
    assert root.tag == f"{{{NS}}}VersioningConfiguration" and len(root) == 0
    body = f'<VersioningConfiguration xmlns="{NS}"><Status>Enabled</Status></VersioningConfiguration>'.encode()
    assert config_xml.parse_versioning(body) == "Enabled"
    assert config_xml.parse_versioning(b"<VersioningConfiguration/>") == ""
    with pytest.raises(errors.MalformedXML):
        config_xml.parse_versioning(b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>")
    config_xml.check_version_id({"versionId": "null"})
    config_xml.check_version_id({})
    for bad in ("", "3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"):
        with pytest.raises(errors.InvalidArgument):
            config_xml.check_version_id({"versionId": bad})


def test_list_versions_document():
    listing = Listing([ListedObject("a b", 3, "etag1", 1_700_000_000_000_000_000)], ["dir/"], True, "dir/")
    root = ET.fromstring(config_xml.list_versions(
        listing, bucket="bkt", prefix="", delimiter="/", key_marker="", version_id_marker="", max_keys=2,
        encode=lambda s: s.replace(" ", "%20"), url_encoded=True))
    version = root.find("s3:Version", N)
    assert version.findtext("s3:Key", namespaces=N) == "a%20b"
    assert version.findtext("s3:VersionId", namespaces=N) == "null"
    assert version.findtext("s3:IsLatest", namespaces=N) == "true"
    assert version.findtext("s3:ETag", namespaces=N) == '"etag1"'
    assert root.findtext("s3:IsTruncated", namespaces=N) == "true"
    assert root.findtext("s3:NextKeyMarker", namespaces=N) == "dir/"
    assert root.findtext("s3:NextVersionIdMarker", namespaces=N) == "null"
    assert root.findtext("s3:CommonPrefixes/s3:Prefix", namespaces=N) == "dir/"
    assert root.findtext("s3:EncodingType", namespaces=N) == "url"


def test_delete_objects_with_version_ids():
    from services.gateway import s3xml
    body = (f'<Delete xmlns="{NS}"><Quiet>true</Quiet><Object><Key>a</Key><VersionId>null</VersionId></Object>'
            "<Object><Key>b</Key></Object></Delete>").encode()
    assert s3xml.parse_delete_object_versions(body) == ([("a", "null"), ("b", None)], True)
    assert s3xml.parse_delete_objects(body) == (["a", "b"], True)
