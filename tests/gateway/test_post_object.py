"""Browser POST uploads: the policy document, its conditions and its signatures, as botocore's
generate_presigned_post makes them (SigV4 with an s3v4 client, SigV2 by default)."""
from __future__ import annotations

import base64
import json
import time

import boto3
import pytest
from botocore.config import Config

from sealstore import errors
from services.gateway import post_object
from services.gateway.auth import Authenticator, Credentials

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def _client(v4: bool):
    config = Config(signature_version="s3v4") if v4 else None
    return boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                        aws_access_key_id=AK, aws_secret_access_key=SK, config=config)


def _authenticator(secret=SK) -> Authenticator:
    return Authenticator(Credentials(access_key=AK, secret_key=secret))


def _form(v4: bool, **kwargs) -> dict[str, str]:
    post = _client(v4).generate_presigned_post("bkt", "uploads/${filename}", **kwargs)
    return {k.lower(): v for k, v in post["fields"].items()}


@pytest.mark.parametrize("v4", [True, False])
def test_botocore_presigned_post_verifies_and_meets_its_policy(v4):
    fields = _form(v4, Fields={"x-amz-server-side-encryption": "aws:kms",
                               "x-amz-server-side-encryption-aws-kms-key-id": "finance-key"},
                   Conditions=[{"x-amz-server-side-encryption": "aws:kms"},
                               {"x-amz-server-side-encryption-aws-kms-key-id": "finance-key"},
                               ["starts-with", "$key", "uploads/"], ["content-length-range", 10, 1000]])
    api = type("Api", (), {"authenticator": _authenticator(), "throttle": _NoThrottle()})()
    request = type("Req", (), {"remote": "127.0.0.1"})()
    assert post_object._authenticate_form(api, request, fields) == AK
    policy = post_object.parse_policy(fields["policy"])
    assert policy.length_range == (10, 1000)
    post_object.check_conditions(policy, fields, "bkt", time.time())
    # The bucket is part of the policy.
    with pytest.raises(errors.AccessDenied):
        post_object.check_conditions(policy, fields, "other-bucket", time.time())
    # A field the policy does not name, or a changed one, is refused.
    with pytest.raises(errors.AccessDenied, match="Extra input fields"):
        post_object.check_conditions(policy, {**fields, "x-amz-meta-extra": "1"}, "bkt", time.time())
    with pytest.raises(errors.AccessDenied, match="Condition failed"):
        post_object.check_conditions(policy, {**fields, "x-amz-server-side-encryption-aws-kms-key-id": "k2"},
                                     "bkt", time.time())
    # x-ignore-* fields need no condition.
    post_object.check_conditions(policy, {**fields, "x-ignore-me": "1"}, "bkt", time.time())
    with pytest.raises(errors.AccessDenied, match="expired"):
        post_object.check_conditions(policy, fields, "bkt", time.time() + 7200)


@pytest.mark.parametrize("v4", [True, False])
def test_tampered_policy_or_wrong_secret_fails_the_signature(v4):
    fields = _form(v4)
    api = type("Api", (), {"authenticator": _authenticator(), "throttle": _NoThrottle()})()
    request = type("Req", (), {"remote": "127.0.0.1"})()
    policy = json.loads(base64.b64decode(fields["policy"]))
    policy["conditions"].append(["content-length-range", 0, 10 ** 12])
    tampered = {**fields, "policy": base64.b64encode(json.dumps(policy).encode()).decode()}
    with pytest.raises(errors.SignatureDoesNotMatch):
        post_object._authenticate_form(api, request, tampered)
    api.authenticator = _authenticator(secret="another secret")
    with pytest.raises(errors.SignatureDoesNotMatch):
        post_object._authenticate_form(api, request, fields)
    assert api.throttle.failures == 2


def test_unsigned_or_half_signed_forms_are_refused():
    api = type("Api", (), {"authenticator": _authenticator(), "throttle": _NoThrottle()})()
    request = type("Req", (), {"remote": "127.0.0.1"})()
    with pytest.raises(errors.AccessDenied):
        post_object._authenticate_form(api, request, {"key": "k"})
    with pytest.raises(errors.AccessDenied):
        post_object._authenticate_form(api, request, {"key": "k", "policy": "e30="})
    with pytest.raises(errors.InvalidArgument):
        post_object._authenticate_form(api, request, {"policy": "e30=", "x-amz-signature": "00",
                                                      "x-amz-algorithm": "AWS4-HMAC-SHA1"})
    with pytest.raises(errors.InvalidAccessKeyId):
        post_object._authenticate_form(api, request, {"policy": "e30=", "signature": "x", "awsaccesskeyid": "nobody"})


def _b64(document) -> str:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("document", [
    b"not json", b"[]", {"conditions": []}, {"expiration": "tomorrow", "conditions": []},
    {"expiration": "2030-01-01T00:00:00Z"}, {"expiration": "2030-01-01T00:00:00Z", "conditions": {}},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [["starts-with", "key", "a"]]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [["matches", "$key", "a"]]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", 10, 5]]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", "a", 5]]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [{"a": "1", "b": "2"}]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": [{"a": ["list"]}]},
    {"expiration": "2030-01-01T00:00:00Z", "conditions": ["just a string"]},
])
def test_malformed_policy_documents(document):
    with pytest.raises(errors.InvalidPolicyDocument):
        post_object.parse_policy(_b64(document))


def test_not_base64_policy():
    with pytest.raises(errors.InvalidPolicyDocument):
        post_object.parse_policy("%%%not base64%%%")


def test_success_answers():
    fields = {"success_action_status": "201"}
    answer = post_object.success_answer(fields, "b", "k", "abc", "http://h/b/k", {})
    assert answer.status == 201 and b"<Key>k</Key>" in answer.body and b'"abc"' in answer.body
    assert post_object.success_answer({"success_action_status": "200"}, "b", "k", "e", "l", {}).status == 200
    assert post_object.success_answer({}, "b", "k", "e", "l", {}).status == 204
    redirect = post_object.success_answer({"success_action_redirect": "https://example.com/done?x=1"},
                                          "b", "k y", "e", "l", {})
    assert redirect.status == 303
    assert redirect.headers["Location"].startswith("https://example.com/done?x=1&bucket=b&key=k+y&etag=")


class _NoThrottle:
    def __init__(self):
        self.failures = 0

    def allow(self, address):
        return True

    def failed(self, address, why):
        self.failures += 1
