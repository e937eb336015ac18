"""The bucket policy engine (services/gateway/policy.py): the documents encryption mandates use."""
from __future__ import annotations

import json

import pytest

from sealstore import errors
from services.gateway import policy
from services.gateway.policy import Request

BUCKET = "finance"
ROOT = "root-access-key"

DENY_UNENCRYPTED = {
    "Version": "2012-10-17",
    "Statement": [{
        "Sid": "DenyUnencryptedUploads", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::finance/*",
        "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}},
    }],
}
DENY_OTHER_KEYS = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "WrongAlgorithm", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:PutObject",
         "Resource": ["arn:aws:s3:::finance/*"],
         "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}},
        {"Sid": "WrongKey", "Effect": "Deny", "Principal": {"AWS": ["*"]}, "Action": "s3:PutObject",
         "Resource": "arn:aws:s3:::finance/*",
         "Condition": {"StringNotLikeIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id":
                                                 ["finance-key", "arn:aws:kms:*:*:key/finance-key"]}}},
    ],
}
TLS_ONLY = {
    "Statement": {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                  "Resource": ["arn:aws:s3:::finance", "arn:aws:s3:::finance/*"],
                  "Condition": {"Bool": {"aws:SecureTransport": False}}},
}


def _put(key="report.pdf", secure=True, action="s3:PutObject", **headers) -> Request:
    context = policy.request_context({k.replace("_", "-"): v for k, v in headers.items()},
                                     secure=secure, source_ip="10.1.2.3")
    return Request(action, BUCKET, key, ROOT, context)


def _denied(document, request: Request) -> bool:
    return policy.denying_statement(policy.parse(json.dumps(document), BUCKET), request) is not None


def test_deny_unencrypted_put():
    assert _denied(DENY_UNENCRYPTED, _put())
    assert not _denied(DENY_UNENCRYPTED, _put(x_amz_server_side_encryption="AES256"))
    assert not _denied(DENY_UNENCRYPTED, _put(x_amz_server_side_encryption="aws:kms"))
    # Only PUTs: reading is untouched, and another bucket's resource does not match.
    assert not _denied(DENY_UNENCRYPTED, _put(action="s3:GetObject"))
    assert not _denied(DENY_UNENCRYPTED, Request("s3:PutObject", BUCKET, "", ROOT, {}))


def test_deny_puts_not_under_key_k():
    assert _denied(DENY_OTHER_KEYS, _put())  # no header at all: StringNotEquals holds on a missing key
    assert _denied(DENY_OTHER_KEYS, _put(x_amz_server_side_encryption="AES256"))
    assert _denied(DENY_OTHER_KEYS, _put(x_amz_server_side_encryption="aws:kms",
                                         x_amz_server_side_encryption_aws_kms_key_id="other-key"))
    assert not _denied(DENY_OTHER_KEYS, _put(x_amz_server_side_encryption="aws:kms",
                                             x_amz_server_side_encryption_aws_kms_key_id="finance-key"))
    assert not _denied(DENY_OTHER_KEYS, _put(
        x_amz_server_side_encryption="aws:kms",
        x_amz_server_side_encryption_aws_kms_key_id="arn:aws:kms:us-east-1:123:key/finance-key"))
    # aws:kms naming no key: IfExists makes a missing key's condition true (IAM), so the Deny holds.
    assert _denied(DENY_OTHER_KEYS, _put(x_amz_server_side_encryption="aws:kms"))


def test_tls_only():
    assert _denied(TLS_ONLY, _put(secure=False))
    assert _denied(TLS_ONLY, Request("s3:ListBucket", BUCKET, "", ROOT, {"aws:securetransport": "false"}))
    assert not _denied(TLS_ONLY, _put(secure=True))


def test_allow_statements_never_deny_and_not_action_not_resource():
    allow = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"}]}
    assert not _denied(allow, _put())
    everything_but_get = {"Statement": [{"Effect": "Deny", "Principal": "*", "NotAction": ["s3:Get*"],
                                         "NotResource": "arn:aws:s3:::finance/public/*"}]}
    assert _denied(everything_but_get, _put("private/x"))
    assert not _denied(everything_but_get, _put("private/x", action="s3:GetObject"))
    assert not _denied(everything_but_get, _put("public/x"))


def test_globs_and_case():
    doc = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "S3:put*",
                          "Resource": "arn:aws:s3:::fin?nce/secret/*.pdf"}]}
    assert _denied(doc, _put("secret/a/b.pdf"))
    assert not _denied(doc, _put("secret/a/b.PDF"))
    assert not _denied(doc, _put("open/b.pdf"))


def test_principals():
    only_other = {"Statement": [{"Effect": "Deny", "Principal": {"AWS": "someone-else"}, "Action": "s3:*",
                                 "Resource": "arn:aws:s3:::finance/*"}]}
    assert not _denied(only_other, _put())
    root = {"Statement": [{"Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                           "Action": "s3:*", "Resource": "arn:aws:s3:::finance/*"}]}
    assert _denied(root, _put())
    not_me = {"Statement": [{"Effect": "Deny", "NotPrincipal": {"AWS": ROOT}, "Action": "s3:*",
                             "Resource": "arn:aws:s3:::finance/*"}]}
    assert not _denied(not_me, _put())


def test_condition_semantics():
    def cond(block, **headers):
        doc = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                              "Resource": "arn:aws:s3:::finance/*", "Condition": block}]}
        return _denied(doc, _put(**headers))
    key = "s3:x-amz-server-side-encryption"
    assert cond({"StringEquals": {key: ["AES256", "aws:kms"]}}, x_amz_server_side_encryption="aws:kms")
    assert not cond({"StringEquals": {key: "AES256"}})  # missing key: false
    assert cond({"StringEqualsIfExists": {key: "AES256"}})  # ...unless IfExists
    assert not cond({"StringNotEquals": {key: ["AES256", "aws:kms"]}}, x_amz_server_side_encryption="aws:kms")
    assert cond({"StringEqualsIgnoreCase": {key: "AWS:KMS"}}, x_amz_server_side_encryption="aws:kms")
    assert cond({"StringLike": {key: "aws:*"}}, x_amz_server_side_encryption="aws:kms")
    assert not cond({"Null": {key: "false"}})
    assert cond({"Null": {key: "false"}}, x_amz_server_side_encryption="AES256")
    # Operators AND together, keys within one operator too.
    assert not cond({"Null": {key: "false"}, "Bool": {"aws:SecureTransport": "false"}},
                    x_amz_server_side_encryption="AES256")
    assert cond({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    assert not cond({"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}})


def test_keys_unknown_to_a_request_never_hold():
    """UploadPart: the upload's encryption was checked at CreateMultipartUpload, its parts carry no SSE header."""
    request = Request("s3:PutObject", BUCKET, "k", ROOT, {}, unknown_keys=policy.SSE_KEYS)
    assert not policy.denying_statement(policy.parse(json.dumps(DENY_UNENCRYPTED), BUCKET), request)


def test_policy_management_is_never_denied():
    lockout = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                              "Resource": ["arn:aws:s3:::finance", "arn:aws:s3:::finance/*"]}]}
    text = json.dumps(lockout)
    for action in ("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"):
        policy.check(text, BUCKET, Request(action, BUCKET, "", ROOT, {}))
    with pytest.raises(errors.AccessDenied):
        policy.check(text, BUCKET, Request("s3:ListBucket", BUCKET, "", ROOT, {}))
    policy.check("", BUCKET, Request("s3:ListBucket", BUCKET, "", ROOT, {}))


@pytest.mark.parametrize("document", [
    "", "[]", "not json", "{", '{"Statement": []}', '{"Version": "2020-01-01", "Statement": {}}',
    json.dumps({"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "s3:*", "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}),  # no Principal
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Resource": "*"}]}),  # no Action
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*"}]}),  # no Resource
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "ec2:RunInstances", "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                               "Resource": "arn:aws:s3:::other-bucket/*"}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "NotAction": "s3:Get*",
                               "Resource": "*"}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
                               "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
                               "Condition": {"Null": {"s3:x-amz-server-side-encryption": "maybe"}}}]}),
    json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*",
                               "Surprise": 1}]}),
    json.dumps({"Statement": [{"Sid": "a", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"},
                              {"Sid": "a", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}]}),
    '{"Statement": [], "Statement": []}',
    "{" + " " * 30000 + "}",
])
def test_malformed_policies_are_refused(document):
    with pytest.raises(errors.MalformedPolicy):
        policy.parse(document, BUCKET)


def test_action_names_per_operation():
    assert policy.object_action("PUT", {}, {}) == "s3:PutObject"
    assert policy.object_action("PUT", {"uploadId": "u", "partNumber": "1"}, {}) == "s3:PutObject"
    assert policy.object_action("POST", {"uploads": ""}, {}) == "s3:PutObject"
    assert policy.object_action("GET", {}, {}) == "s3:GetObject"
    assert policy.object_action("HEAD", {"versionId": "null"}, {}) == "s3:GetObjectVersion"
    assert policy.object_action("DELETE", {}, {}) == "s3:DeleteObject"
    assert policy.object_action("PUT", {"tagging": ""}, {}) == "s3:PutObjectTagging"
    assert policy.bucket_action("GET", {"list-type": "2"}) == "s3:ListBucket"
    assert policy.bucket_action("PUT", {"policy": ""}) == "s3:PutBucketPolicy"
    assert policy.bucket_action("POST", {"delete": ""}) == "s3:DeleteObject"
    assert policy.bucket_action("PUT", {}) == "s3:CreateBucket"
