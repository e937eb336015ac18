"""One typed error tree for every service, and the one table mapping it to S3 and gRPC.

A service raises a `SealstoreError` subclass; the RPC layer (sealstore.rpc) turns it into a
gRPC status carrying the S3 code in trailing metadata, and `from_rpc_error` turns it back
into the same typed error on the calling side. The gateway renders it as S3 XML.
Messages name the key or object that failed; they never contain key bytes.
"""
from __future__ import annotations

import grpc

ERROR_CODE_METADATA = "sealstore-error-code"

SC = grpc.StatusCode


class SealstoreError(Exception):
    """Base of every error a client of a sealstore service can see."""

    code = "InternalError"
    http_status = 500
    grpc_status = SC.INTERNAL
    default_message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, resource: str = ""):
        self.message = message or self.default_message
        self.resource = resource
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


# (class name, S3 code, HTTP status, gRPC status, default message): the one table.
_TABLE = [
    ("InternalError", "InternalError", 500, SC.INTERNAL, "We encountered an internal error. Please try again."),
    ("ServiceUnavailable", "ServiceUnavailable", 503, SC.UNAVAILABLE, "The service is unavailable. Please retry."),
    ("SlowDown", "SlowDown", 503, SC.UNAVAILABLE, "Not enough storage drives are online (quorum lost). Please retry."),
    # MinIO's answer when the drives are out of space (HTTP 507 Insufficient Storage).
    ("StorageFull", "XMinioStorageFull", 507, SC.RESOURCE_EXHAUSTED,
     "The storage drives are out of space. Delete some objects or add drives, then retry."),
    ("NoSuchBucket", "NoSuchBucket", 404, SC.NOT_FOUND, "The specified bucket does not exist"),
    ("NoSuchKey", "NoSuchKey", 404, SC.NOT_FOUND, "The specified key does not exist."),
    ("BucketAlreadyOwnedByYou", "BucketAlreadyOwnedByYou", 409, SC.ALREADY_EXISTS,
     "Your previous request to create the named bucket succeeded and you already own it."),
    ("BucketNotEmpty", "BucketNotEmpty", 409, SC.FAILED_PRECONDITION, "The bucket you tried to delete is not empty"),
    ("InvalidBucketName", "InvalidBucketName", 400, SC.INVALID_ARGUMENT, "The specified bucket is not valid."),
    ("KeyTooLongError", "KeyTooLongError", 400, SC.INVALID_ARGUMENT, "Your key is too long"),
    ("InvalidObjectName", "XSealstoreInvalidObjectName", 400, SC.INVALID_ARGUMENT, "Object name contains unsupported characters."),
    ("AccessDenied", "AccessDenied", 403, SC.PERMISSION_DENIED, "Access Denied"),
    ("InvalidAccessKeyId", "InvalidAccessKeyId", 403, SC.UNAUTHENTICATED,
     "The AWS Access Key Id you provided does not exist in our records."),
    ("SignatureDoesNotMatch", "SignatureDoesNotMatch", 403, SC.UNAUTHENTICATED,
     "The request signature we calculated does not match the signature you provided. Check your key and signing method."),
    ("RequestTimeTooSkewed", "RequestTimeTooSkewed", 403, SC.UNAUTHENTICATED,
     "The difference between the request time and the server's time is too large."),
    ("AuthorizationHeaderMalformed", "AuthorizationHeaderMalformed", 400, SC.INVALID_ARGUMENT,
     "The authorization header you provided is invalid."),
    ("AuthorizationQueryParametersError", "AuthorizationQueryParametersError", 400, SC.INVALID_ARGUMENT,
     "Query-string authentication requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."),
    ("ExpiredToken", "AccessDenied", 403, SC.UNAUTHENTICATED, "Request has expired"),
    ("MissingSecurityHeader", "MissingSecurityHeader", 400, SC.INVALID_ARGUMENT, "Your request is missing a required header."),
    ("InvalidArgument", "InvalidArgument", 400, SC.INVALID_ARGUMENT, "Invalid Argument"),
    ("InvalidRequest", "InvalidRequest", 400, SC.INVALID_ARGUMENT, "Invalid Request"),
    ("InvalidDigest", "InvalidDigest", 400, SC.INVALID_ARGUMENT, "The Content-MD5 you specified is not valid."),
    ("BadDigest", "BadDigest", 400, SC.INVALID_ARGUMENT, "The Content-MD5 you specified did not match what we received."),
    ("XAmzContentSHA256Mismatch", "XAmzContentSHA256Mismatch", 400, SC.INVALID_ARGUMENT,
     "The provided 'x-amz-content-sha256' header does not match what was computed."),
    ("IncompleteBody", "IncompleteBody", 400, SC.INVALID_ARGUMENT,
     "You did not provide the number of bytes specified by the Content-Length HTTP header."),
    ("MissingContentLength", "MissingContentLength", 411, SC.INVALID_ARGUMENT, "You must provide the Content-Length HTTP header."),
    ("EntityTooLarge", "EntityTooLarge", 400, SC.INVALID_ARGUMENT, "Your proposed upload exceeds the maximum allowed object size."),
    ("MaxMessageLengthExceeded", "MaxMessageLengthExceeded", 400, SC.INVALID_ARGUMENT, "Your request was too big."),
    ("RequestTimeout", "RequestTimeout", 400, SC.INVALID_ARGUMENT,
     "Your socket connection to the server was not read from or written to within the timeout period."),
    ("MalformedXML", "MalformedXML", 400, SC.INVALID_ARGUMENT,
     "The XML you provided was not well-formed or did not validate against our published schema."),
    ("PreconditionFailed", "PreconditionFailed", 412, SC.FAILED_PRECONDITION,
     "At least one of the pre-conditions you specified did not hold"),
    # Not a failure: the client's cached copy is current. Rendered without a body.
    ("NotModified", "NotModified", 304, SC.FAILED_PRECONDITION, "Not Modified"),
    ("InvalidRange", "InvalidRange", 416, SC.OUT_OF_RANGE, "The requested range is not satisfiable"),
    ("InvalidPartNumber", "InvalidPartNumber", 416, SC.OUT_OF_RANGE, "The requested partnumber is not satisfiable"),
    ("MethodNotAllowed", "MethodNotAllowed", 405, SC.UNIMPLEMENTED, "The specified method is not allowed against this resource."),
    ("NotImplemented", "NotImplemented", 501, SC.UNIMPLEMENTED, "A header you provided implies functionality that is not implemented."),
    # Multipart (AWS's codes and statuses).
    ("EntityTooSmall", "EntityTooSmall", 400, SC.INVALID_ARGUMENT,
     "Your proposed upload is smaller than the minimum allowed object size."),
    ("InvalidPart", "InvalidPart", 400, SC.INVALID_ARGUMENT,
     "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."),
    ("InvalidPartOrder", "InvalidPartOrder", 400, SC.INVALID_ARGUMENT,
     "The list of parts was not in ascending order. The parts list must be specified in order by part number."),
    ("NoSuchUpload", "NoSuchUpload", 404, SC.NOT_FOUND,
     "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."),
    # Bucket policy, tagging, browser POST.
    # AWS's code for too many tags on an object (or bucket).
    ("BadRequest", "BadRequest", 400, SC.INVALID_ARGUMENT, "Bad Request"),
    # ACLs are disabled (AWS's BucketOwnerEnforced): only the owner's full control.
    ("AccessControlListNotSupported", "AccessControlListNotSupported", 400, SC.INVALID_ARGUMENT,
     "The bucket does not allow ACLs"),
    ("NoSuchBucketPolicy", "NoSuchBucketPolicy", 404, SC.NOT_FOUND, "The bucket policy does not exist"),
    ("MalformedPolicy", "MalformedPolicy", 400, SC.INVALID_ARGUMENT, "Policies must be valid JSON and the first byte must be '{'"),
    ("NoSuchTagSet", "NoSuchTagSet", 404, SC.NOT_FOUND, "The TagSet does not exist"),
    ("InvalidTag", "InvalidTag", 400, SC.INVALID_ARGUMENT, "The tag provided was not a valid tag."),
    ("MalformedPOSTRequest", "MalformedPOSTRequest", 400, SC.INVALID_ARGUMENT,
     "The body of your POST request is not well-formed multipart/form-data."),
    ("InvalidPolicyDocument", "InvalidPolicyDocument", 400, SC.INVALID_ARGUMENT,
     "The content of the form does not meet the conditions specified in the policy document."),
    ("EntityTooSmallForPolicy", "EntityTooSmall", 400, SC.INVALID_ARGUMENT,
     "Your proposed upload is smaller than the minimum allowed size"),
    # SSE-C: the customer key given does not open the object (AWS answers 403 AccessDenied).
    ("CustomerKeyMismatch", "AccessDenied", 403, SC.PERMISSION_DENIED,
     "The provided customer key does not match the key the object was encrypted with."),
    # SSE-C with a customer algorithm other than AES256 (AWS's code and text).
    ("InvalidEncryptionAlgorithmError", "InvalidEncryptionAlgorithmError", 400, SC.INVALID_ARGUMENT,
     "The Encryption request you specified is not valid. Supported value: AES256."),
    ("ServerSideEncryptionConfigurationNotFoundError", "ServerSideEncryptionConfigurationNotFoundError", 404, SC.NOT_FOUND,
     "The server side encryption configuration was not found"),
    ("ObjectTampered", "XSealstoreObjectTampered", 500, SC.DATA_LOSS, "The object's stored data failed authentication."),
    ("KMSNotFound", "KMS.NotFoundException", 400, SC.NOT_FOUND, "The KMS key does not exist."),
    ("KMSDisabled", "KMS.DisabledException", 400, SC.FAILED_PRECONDITION, "The KMS key is disabled."),
    ("KMSPendingDeletion", "KMS.KMSInvalidStateException", 400, SC.FAILED_PRECONDITION,
     "The KMS key is pending deletion."),
    ("KMSKeyExists", "KMS.AlreadyExistsException", 409, SC.ALREADY_EXISTS, "A KMS key with this name already exists."),
    ("KMSInvalidCiphertext", "KMS.InvalidCiphertextException", 400, SC.INVALID_ARGUMENT,
     "The data key ciphertext is not authentic for this key and context."),
    ("KMSInvalidKeyName", "KMS.ValidationException", 400, SC.INVALID_ARGUMENT, "The KMS key name is not valid."),
    ("KMSAccessDenied", "AccessDenied", 403, SC.PERMISSION_DENIED, "The kms denied this call to the caller's identity."),
    ("KMSUnavailable", "KMS.KMSInternalException", 503, SC.UNAVAILABLE, "The key service is unavailable."),
]

ERRORS_BY_NAME: dict[str, type[SealstoreError]] = {"InternalError": SealstoreError}
ERRORS_BY_CODE: dict[str, type[SealstoreError]] = {"InternalError": SealstoreError}

for _name, _code, _http, _grpc, _msg in _TABLE:
    if _name == "InternalError":
        continue
    _cls = type(_name, (SealstoreError,), {
        "code": _code, "http_status": _http, "grpc_status": _grpc, "default_message": _msg,
        "__doc__": f"S3 {_code} ({_http}); gRPC {_grpc.name}.",
    })
    ERRORS_BY_NAME[_name] = _cls
    ERRORS_BY_CODE.setdefault(_code, _cls)
    globals()[_name] = _cls

# Explicit names for linters and readers; each is one row of _TABLE above.
ServiceUnavailable = ERRORS_BY_NAME["ServiceUnavailable"]
SlowDown = ERRORS_BY_NAME["SlowDown"]
StorageFull = ERRORS_BY_NAME["StorageFull"]
NoSuchBucket = ERRORS_BY_NAME["NoSuchBucket"]
NoSuchKey = ERRORS_BY_NAME["NoSuchKey"]
BucketAlreadyOwnedByYou = ERRORS_BY_NAME["BucketAlreadyOwnedByYou"]
BucketNotEmpty = ERRORS_BY_NAME["BucketNotEmpty"]
InvalidBucketName = ERRORS_BY_NAME["InvalidBucketName"]
KeyTooLongError = ERRORS_BY_NAME["KeyTooLongError"]
InvalidObjectName = ERRORS_BY_NAME["InvalidObjectName"]
AccessDenied = ERRORS_BY_NAME["AccessDenied"]
InvalidAccessKeyId = ERRORS_BY_NAME["InvalidAccessKeyId"]
SignatureDoesNotMatch = ERRORS_BY_NAME["SignatureDoesNotMatch"]
RequestTimeTooSkewed = ERRORS_BY_NAME["RequestTimeTooSkewed"]
AuthorizationHeaderMalformed = ERRORS_BY_NAME["AuthorizationHeaderMalformed"]
AuthorizationQueryParametersError = ERRORS_BY_NAME["AuthorizationQueryParametersError"]
ExpiredToken = ERRORS_BY_NAME["ExpiredToken"]
MissingSecurityHeader = ERRORS_BY_NAME["MissingSecurityHeader"]
InvalidArgument = ERRORS_BY_NAME["InvalidArgument"]
InvalidRequest = ERRORS_BY_NAME["InvalidRequest"]
InvalidDigest = ERRORS_BY_NAME["InvalidDigest"]
BadDigest = ERRORS_BY_NAME["BadDigest"]
XAmzContentSHA256Mismatch = ERRORS_BY_NAME["XAmzContentSHA256Mismatch"]
IncompleteBody = ERRORS_BY_NAME["IncompleteBody"]
MissingContentLength = ERRORS_BY_NAME["MissingContentLength"]
EntityTooLarge = ERRORS_BY_NAME["EntityTooLarge"]
MalformedXML = ERRORS_BY_NAME["MalformedXML"]
MaxMessageLengthExceeded = ERRORS_BY_NAME["MaxMessageLengthExceeded"]
RequestTimeout = ERRORS_BY_NAME["RequestTimeout"]
InvalidRange = ERRORS_BY_NAME["InvalidRange"]
InvalidPartNumber = ERRORS_BY_NAME["InvalidPartNumber"]
PreconditionFailed = ERRORS_BY_NAME["PreconditionFailed"]
NotModified = ERRORS_BY_NAME["NotModified"]
MethodNotAllowed = ERRORS_BY_NAME["MethodNotAllowed"]
NotImplementedS3 = ERRORS_BY_NAME["NotImplemented"]
ServerSideEncryptionConfigurationNotFoundError = ERRORS_BY_NAME["ServerSideEncryptionConfigurationNotFoundError"]
EntityTooSmall = ERRORS_BY_NAME["EntityTooSmall"]
InvalidPart = ERRORS_BY_NAME["InvalidPart"]
InvalidPartOrder = ERRORS_BY_NAME["InvalidPartOrder"]
NoSuchUpload = ERRORS_BY_NAME["NoSuchUpload"]
BadRequest = ERRORS_BY_NAME["BadRequest"]
AccessControlListNotSupported = ERRORS_BY_NAME["AccessControlListNotSupported"]
NoSuchBucketPolicy = ERRORS_BY_NAME["NoSuchBucketPolicy"]
MalformedPolicy = ERRORS_BY_NAME["MalformedPolicy"]
NoSuchTagSet = ERRORS_BY_NAME["NoSuchTagSet"]
InvalidTag = ERRORS_BY_NAME["InvalidTag"]
MalformedPOSTRequest = ERRORS_BY_NAME["MalformedPOSTRequest"]
InvalidPolicyDocument = ERRORS_BY_NAME["InvalidPolicyDocument"]
EntityTooSmallForPolicy = ERRORS_BY_NAME["EntityTooSmallForPolicy"]
CustomerKeyMismatch = ERRORS_BY_NAME["CustomerKeyMismatch"]
InvalidEncryptionAlgorithmError = ERRORS_BY_NAME["InvalidEncryptionAlgorithmError"]
ObjectTampered = ERRORS_BY_NAME["ObjectTampered"]
KMSNotFound = ERRORS_BY_NAME["KMSNotFound"]
KMSDisabled = ERRORS_BY_NAME["KMSDisabled"]
KMSKeyExists = ERRORS_BY_NAME["KMSKeyExists"]
KMSPendingDeletion = ERRORS_BY_NAME["KMSPendingDeletion"]
KMSInvalidCiphertext = ERRORS_BY_NAME["KMSInvalidCiphertext"]
KMSInvalidKeyName = ERRORS_BY_NAME["KMSInvalidKeyName"]
KMSAccessDenied = ERRORS_BY_NAME["KMSAccessDenied"]
KMSUnavailable = ERRORS_BY_NAME["KMSUnavailable"]
InternalError = SealstoreError

# When a peer sent no sealstore code (a crash, a network failure), map its status.
_FALLBACK_BY_STATUS = {
    SC.UNAVAILABLE: ServiceUnavailable,
    SC.DEADLINE_EXCEEDED: ServiceUnavailable,
    SC.CANCELLED: ServiceUnavailable,
    SC.PERMISSION_DENIED: AccessDenied,
    SC.UNAUTHENTICATED: AccessDenied,
    SC.DATA_LOSS: ObjectTampered,
}


def grpc_trailing_metadata(err: SealstoreError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries `err`'s class across a gRPC call."""
    return ((ERROR_CODE_METADATA, type(err).__name__),)


ERROR_MESSAGE_METADATA = "sealstore-error-message-bin"


def grpc_initial_metadata(err: SealstoreError) -> tuple[tuple[str, str | bytes], ...]:
    """`err` as initial metadata, for a client-streaming call that ends while the client is
    still writing: grpc-python's asyncio client may then replace the call's status with a
    generic INTERNAL "Internal error from Core" (grpc/grpc#36066), but not its initial metadata."""
    return ((ERROR_CODE_METADATA, type(err).__name__), (ERROR_MESSAGE_METADATA, err.message.encode("utf-8")))


def from_initial_metadata(metadata) -> SealstoreError | None:
    """The typed error a peer sent with `grpc_initial_metadata`, or None."""
    values = dict(metadata or ())
    cls = ERRORS_BY_NAME.get(values.get(ERROR_CODE_METADATA, ""))
    if cls is None:
        return None
    message = values.get(ERROR_MESSAGE_METADATA, b"")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return cls(message or None)


def from_rpc_error(exc: grpc.RpcError) -> SealstoreError:
    """Rebuilds the typed error a peer raised from the gRPC error it returned."""
    name = ""
    try:
        for key, value in (exc.trailing_metadata() or ()):
            if key == ERROR_CODE_METADATA:
                name = value
    except Exception:  # a locally generated RpcError may have no metadata
        name = ""
    details = ""
    try:
        details = exc.details() or ""
    except Exception:
        pass
    cls = ERRORS_BY_NAME.get(name)
    if cls is None:
        try:
            status = exc.code()
        except Exception:
            status = SC.UNKNOWN
        cls = _FALLBACK_BY_STATUS.get(status, SealstoreError)
    return cls(details or None)
