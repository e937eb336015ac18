"""Bucket policies: the AWS policy grammar that encryption mandates use, parsed and evaluated.

Pure: a policy document in, a decision out. There is one user (the root credentials), who is
allowed everything a policy does not explicitly deny; so what a policy adds in practice is
Deny statements ("no unencrypted PUT", "no PUT under any key but K", "TLS only").

Grammar: Version, Id, Statement (one object or a list), each with Sid, Effect (Allow/Deny),
Principal or NotPrincipal ("*", {"AWS": ...}), Action or NotAction (globs such as s3:* or
s3:Put*), Resource or NotResource (globs over arn:aws:s3:::bucket[/key]) and Condition.
Condition operators: String(Not)Equals(IgnoreCase), String(Not)Like, Null, Bool, Numeric*,
(Not)IpAddress, each also with the IfExists suffix. Anything else is refused when the policy is
put (MalformedPolicy), so a statement the engine cannot evaluate never sits there unenforced.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Mapping

from sealstore import errors

VERSIONS = ("2012-10-17", "2008-10-17")
ARN_PREFIX = "arn:aws:s3:::"
MAX_POLICY_BYTES = 20 * 1024
"""AWS's size limit of a bucket policy."""
SSE_KEYS = frozenset({"s3:x-amz-server-side-encryption", "s3:x-amz-server-side-encryption-aws-kms-key-id",
                      "s3:x-amz-server-side-encryption-customer-algorithm",
                      "s3:x-amz-server-side-encryption-context"})
_STRING_OPS = {"stringequals", "stringnotequals", "stringequalsignorecase", "stringnotequalsignorecase",
               "stringlike", "stringnotlike"}
_NUMERIC_OPS = {"numericequals", "numericnotequals", "numericlessthan", "numericlessthanequals",
                "numericgreaterthan", "numericgreaterthanequals"}
_IP_OPS = {"ipaddress", "notipaddress"}
_NEGATED = {"stringnotequals", "stringnotequalsignorecase", "stringnotlike", "numericnotequals", "notipaddress"}
_OPERATORS = _STRING_OPS | _NUMERIC_OPS | _IP_OPS | {"bool", "null"}
_ACTION = re.compile(r"^(\*|s3:[A-Za-z*?]+)$", re.IGNORECASE)


def _malformed(message: str) -> errors.SealstoreError:
    return errors.MalformedPolicy(message)


@dataclass(frozen=True)
class Condition:
    operator: str  # lower case, without IfExists
    key: str  # lower case
    values: tuple[str, ...]
    if_exists: bool


@dataclass(frozen=True)
class Statement:
    sid: str
    deny: bool
    principals: tuple[str, ...] | None  # None: every principal ("*")
    not_principal: bool
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Request:
    """What a policy is evaluated against."""

    action: str  # e.g. s3:PutObject
    bucket: str
    key: str  # '' for bucket operations
    principal: str  # the access key
    context: Mapping[str, str] = field(default_factory=dict)
    """Condition keys (lower case) present in the request, with their value."""
    unknown_keys: frozenset[str] = frozenset()
    """Condition keys that do not apply to this request: a condition on one of them never holds."""

    @property
    def arn(self) -> str:
        return f"{ARN_PREFIX}{self.bucket}/{self.key}" if self.key else f"{ARN_PREFIX}{self.bucket}"


# ---------------------------------------------------------------------------------------------
# Parsing


def _strings(value, what: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise _malformed(f"{what} must not be empty")
    if not all(isinstance(v, str) for v in items):
        raise _malformed(f"{what} must be a string or a list of strings")
    return tuple(items)


def _condition_values(value, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, (str, int, float)):
            out.append(str(v))
        else:
            raise _malformed(f"{what}: condition values must be strings, numbers or booleans")
    if not out:
        raise _malformed(f"{what}: a condition needs at least one value")
    return tuple(out)


def _parse_principal(value) -> tuple[str, ...] | None:
    if value == "*":
        return None
    if not isinstance(value, dict) or not value:
        raise _malformed("Invalid principal in policy")
    names: list[str] = []
    for kind, ids in value.items():
        if kind not in ("AWS", "CanonicalUser", "Federated", "Service"):
            raise _malformed(f"Invalid principal in policy: unknown principal type {kind!r}")
        for ident in _strings(ids, "Principal"):
            if kind == "AWS" and ident == "*":
                return None
            # Only AWS principals can name this store's user; the rest never match.
            names.append(ident if kind == "AWS" else f"{kind}:{ident}")
    return tuple(names)


def _parse_conditions(value, sid: str) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise _malformed(f"Condition of statement {sid!r} must be an object")
    out = []
    for op_name, block in value.items():
        if not isinstance(op_name, str) or not isinstance(block, dict) or not block:
            raise _malformed(f"Invalid Condition block {op_name!r}")
        lowered = op_name.lower()
        if_exists = lowered.endswith("ifexists")
        base = lowered[: -len("ifexists")] if if_exists else lowered
        if base not in _OPERATORS or (if_exists and base == "null"):
            raise _malformed(f"Condition operator {op_name!r} is not supported")
        for key, raw in block.items():
            if not isinstance(key, str) or not key:
                raise _malformed(f"Invalid condition key in {op_name}")
            values = _condition_values(raw, f"{op_name} {key}")
            if base in ("null", "bool") and any(v.lower() not in ("true", "false") for v in values):
                raise _malformed(f"{op_name} takes true or false")
            if base in _NUMERIC_OPS:
                for v in values:
                    try:
                        float(v)
                    except ValueError:
                        raise _malformed(f"{op_name} {key}: {v!r} is not a number") from None
            if base in _IP_OPS:
                for v in values:
                    try:
                        ipaddress.ip_network(v, strict=False)
                    except ValueError:
                        raise _malformed(f"{op_name} {key}: {v!r} is not an IP address or range") from None
            out.append(Condition(base, key.lower(), values, if_exists))
    return tuple(out)


def _resource_bucket_matches(resource: str, bucket: str) -> bool:
    if resource == "*":
        return True
    if not resource.startswith(ARN_PREFIX):
        return False
    bucket_part = resource[len(ARN_PREFIX):].split("/", 1)[0]
    return bool(bucket_part) and _glob(bucket_part, bucket)


def _pick(raw: dict, name: str, negated: str, sid: str, required: bool = True):
    has, has_not = name in raw, negated in raw
    if has and has_not:
        raise _malformed(f"Statement {sid!r} has both {name} and {negated}")
    if not has and not has_not:
        if required:
            raise _malformed(f"Missing required field {name}")
        return None, False
    return (raw[name], False) if has else (raw[negated], True)


_STATEMENT_FIELDS = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
                     "NotResource", "Condition"}


def _parse_statement(raw, bucket: str, index: int) -> Statement:
    if not isinstance(raw, dict):
        raise _malformed("Each Statement must be an object")
    unknown = set(raw) - _STATEMENT_FIELDS
    if unknown:
        raise _malformed(f"Unknown field {sorted(unknown)[0]}")
    sid = raw.get("Sid", f"#{index}")
    if not isinstance(sid, str):
        raise _malformed("Sid must be a string")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _malformed("Invalid effect: Effect must be Allow or Deny")
    principal_value, not_principal = _pick(raw, "Principal", "NotPrincipal", sid)
    principals = _parse_principal(principal_value)
    action_value, not_action = _pick(raw, "Action", "NotAction", sid)
    actions = _strings(action_value, "Action")
    for action in actions:
        if not _ACTION.match(action):
            raise _malformed(f"Policy has invalid action: {action[:100]}")
    resource_value, not_resource = _pick(raw, "Resource", "NotResource", sid)
    resources = _strings(resource_value, "Resource")
    for resource in resources:
        if not _resource_bucket_matches(resource, bucket):
            raise _malformed(f"Policy has invalid resource: {resource[:200]}")
    conditions = _parse_conditions(raw["Condition"], sid) if "Condition" in raw else ()
    return Statement(sid, effect == "Deny", principals, not_principal, actions, not_action, resources,
                     not_resource, conditions)


def parse(text: str | bytes, bucket: str) -> Policy:
    """A bucket policy document, validated for `bucket`; MalformedPolicy if it is not one."""
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise _malformed(f"Policies must be at most {MAX_POLICY_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("Policies must be valid UTF-8 JSON") from None
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise _malformed(f"Policies must be at most {MAX_POLICY_BYTES} bytes")
    if not text.lstrip().startswith("{"):
        raise errors.MalformedPolicy()
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise errors.MalformedPolicy() from None
    if not isinstance(raw, dict):
        raise errors.MalformedPolicy()
    unknown = set(raw) - {"Version", "Id", "Statement"}
    if unknown:
        raise _malformed(f"Unknown field {sorted(unknown)[0]}")
    if raw.get("Version", VERSIONS[0]) not in VERSIONS:
        raise _malformed("The policy must contain a valid version string")
    if "Id" in raw and not isinstance(raw["Id"], str):
        raise _malformed("Id must be a string")
    if "Statement" not in raw:
        raise _malformed("Missing required field Statement")
    statements = raw["Statement"]
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise _malformed("Statement must be an object or a non-empty list")
    parsed = tuple(_parse_statement(s, bucket, i) for i, s in enumerate(statements))
    sids = [s.sid for s in parsed if not s.sid.startswith("#")]
    if len(sids) != len(set(sids)):
        raise _malformed("Statement IDs (SID) in a single policy must be unique")
    return Policy(parsed)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k}")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation


def _glob(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """AWS wildcards: `*` any run of characters (slashes too), `?` one character; nothing else is special."""
    if ignore_case:
        pattern, text = pattern.lower(), text.lower()
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _principal_matches(statement: Statement, principal: str) -> bool:
    if statement.principals is None:
        hit = True
    else:
        # The root credentials are the account: its ARN (any account id, ending in :root) or its access key.
        hit = any(p == principal or (p.startswith("arn:aws:iam::") and p.endswith(":root"))
                  for p in statement.principals)
    return hit != statement.not_principal


def _action_matches(statement: Statement, action: str) -> bool:
    hit = any(_glob(a, action, ignore_case=True) for a in statement.actions)
    return hit != statement.not_action


def _resource_matches(statement: Statement, arn: str) -> bool:
    hit = any(r == "*" or _glob(r, arn) for r in statement.resources)
    return hit != statement.not_resource


def _value_matches(op: str, pattern: str, value: str) -> bool:
    if op in ("stringequals", "stringnotequals"):
        return pattern == value
    if op in ("stringequalsignorecase", "stringnotequalsignorecase"):
        return pattern.lower() == value.lower()
    if op in ("stringlike", "stringnotlike"):
        return _glob(pattern, value)
    if op == "bool":
        return pattern.lower() == value.lower()
    if op in _NUMERIC_OPS:
        try:
            a, b = float(value), float(pattern)
        except ValueError:
            return False
        base = op.replace("numericnot", "numeric")
        return {"numericequals": a == b, "numericlessthan": a < b, "numericlessthanequals": a <= b,
                "numericgreaterthan": a > b, "numericgreaterthanequals": a >= b}[base]
    if op in _IP_OPS:
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    return False


def _condition_holds(c: Condition, request: Request) -> bool:
    if c.key in request.unknown_keys:
        return False
    present = c.key in request.context
    if c.operator == "null":
        return any((v.lower() == "true") == (not present) for v in c.values)
    if not present:
        # IAM: a missing key makes a condition false, except for IfExists and negated operators.
        return c.if_exists or c.operator in _NEGATED
    value = request.context[c.key]
    if c.operator in _NEGATED:
        return not any(_value_matches(c.operator, v, value) for v in c.values)
    return any(_value_matches(c.operator, v, value) for v in c.values)


def statement_applies(statement: Statement, request: Request) -> bool:
    return (_principal_matches(statement, request.principal) and _action_matches(statement, request.action)
            and _resource_matches(statement, request.arn)
            and all(_condition_holds(c, request) for c in statement.conditions))


def denying_statement(policy: Policy, request: Request) -> Statement | None:
    """The first Deny statement that applies to `request`, or None (the root user is then allowed)."""
    for statement in policy.statements:
        if statement.deny and statement_applies(statement, request):
            return statement
    return None


# ---------------------------------------------------------------------------------------------
# Which action an S3 request is


def object_action(method: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    versioned = "versionId" in query
    if "uploadId" in query:
        return {"PUT": "s3:PutObject", "POST": "s3:PutObject", "GET": "s3:ListMultipartUploadParts",
                "DELETE": "s3:AbortMultipartUpload"}.get(method, "s3:PutObject")
    if "uploads" in query:
        return "s3:PutObject"
    if "tagging" in query:
        suffix = "Version" if versioned else ""
        return {"GET": f"s3:GetObject{suffix}Tagging", "PUT": f"s3:PutObject{suffix}Tagging",
                "DELETE": f"s3:DeleteObject{suffix}Tagging"}.get(method, "s3:PutObjectTagging")
    if "acl" in query:
        suffix = "Version" if versioned else ""
        return f"s3:GetObject{suffix}Acl" if method == "GET" else f"s3:PutObject{suffix}Acl"
    if method in ("GET", "HEAD"):
        return "s3:GetObjectVersion" if versioned else "s3:GetObject"
    if method == "DELETE":
        return "s3:DeleteObjectVersion" if versioned else "s3:DeleteObject"
    return "s3:PutObject"


_BUCKET_SUBRESOURCE_ACTIONS = {
    "policy": {"GET": "s3:GetBucketPolicy", "PUT": "s3:PutBucketPolicy", "DELETE": "s3:DeleteBucketPolicy"},
    "encryption": {"GET": "s3:GetEncryptionConfiguration", "PUT": "s3:PutEncryptionConfiguration",
                   "DELETE": "s3:PutEncryptionConfiguration"},
    "tagging": {"GET": "s3:GetBucketTagging", "PUT": "s3:PutBucketTagging", "DELETE": "s3:PutBucketTagging"},
    "acl": {"GET": "s3:GetBucketAcl", "PUT": "s3:PutBucketAcl"},
    "versioning": {"GET": "s3:GetBucketVersioning", "PUT": "s3:PutBucketVersioning"},
    "versions": {"GET": "s3:ListBucketVersions"},
    "uploads": {"GET": "s3:ListBucketMultipartUploads"},
    "location": {"GET": "s3:GetBucketLocation"},
    "delete": {"POST": "s3:DeleteObject"},
}
POLICY_ACTIONS = frozenset({"s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"})
"""As AWS lets the account's root user do: managing the policy itself is never denied by it,
so a policy cannot lock the operator out for good."""


def bucket_action(method: str, query: Mapping[str, str]) -> str:
    for name, actions in _BUCKET_SUBRESOURCE_ACTIONS.items():
        if name in query and method in actions:
            return actions[method]
    return {"PUT": "s3:CreateBucket", "DELETE": "s3:DeleteBucket", "POST": "s3:PutObject"}.get(method, "s3:ListBucket")


def request_context(headers: Mapping[str, str], *, secure: bool, source_ip: str,
                    query: Mapping[str, str] | None = None) -> dict[str, str]:
    """The condition keys of a request: the SSE headers as sent (not what encryption by default
    will do, as AWS), aws:SecureTransport, aws:SourceIp, and ListBucket's s3:prefix/delimiter/max-keys."""
    context = {"aws:securetransport": "true" if secure else "false"}
    if source_ip:
        context["aws:sourceip"] = source_ip
    for name in SSE_KEYS | {"s3:x-amz-acl", "s3:x-amz-copy-source", "s3:x-amz-metadata-directive",
                            "s3:x-amz-storage-class"}:
        value = headers.get(name[3:])
        if value is not None:
            context[name] = value.strip()
    for name in ("prefix", "delimiter", "max-keys"):
        if query and name in query:
            context[f"s3:{name}"] = query[name]
    return context


def action_is_policy_management(action: str) -> bool:
    return action in POLICY_ACTIONS


@functools.lru_cache(maxsize=256)
def _parsed(policy_json: str, bucket: str) -> Policy:
    return parse(policy_json, bucket)


def check(policy_json: str, bucket: str, request: Request) -> None:
    """AccessDenied if the bucket's stored policy explicitly denies `request`."""
    if not policy_json or action_is_policy_management(request.action):
        return
    try:
        policy = _parsed(policy_json, bucket)
    except errors.SealstoreError:
        # Stored policies were validated when put; one that no longer parses must not open the bucket.
        raise errors.AccessDenied("The bucket policy could not be evaluated") from None
    if denying_statement(policy, request) is not None:
        raise errors.AccessDenied()
