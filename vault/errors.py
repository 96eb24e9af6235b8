"""Domain errors with stable problem types.

Owns the vocabulary of failures the vault reports to callers. Each error carries a stable slug that the API turns into
an RFC 9457 `type` URI; messages are written for the client and must never contain PHI, secrets or key material.
"""

from __future__ import annotations

PROBLEM_BASE = "urn:healthvault:problem:"


class VaultError(Exception):
    """Base of every error the API may show to a client."""

    slug = "internal"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, extra: dict | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


def _error(name: str, slug: str, status: int, title: str) -> type[VaultError]:
    return type(name, (VaultError,), {"slug": slug, "status": status, "title": title, "__doc__": title})


InvalidInput = _error("InvalidInput", "invalid-input", 422, "The request is not valid")
InvalidIdNumber = _error("InvalidIdNumber", "invalid-id-number", 422, "The resident ID number is not valid")
InvalidPhone = _error("InvalidPhone", "invalid-phone", 422, "The phone number is not valid")
InvalidUsername = _error("InvalidUsername", "invalid-username", 422, "The username is not valid")
WeakPassword = _error("WeakPassword", "weak-password", 422, "The password does not meet the policy")
Conflict = _error("Conflict", "conflict", 409, "The resource already exists")
Unauthenticated = _error("Unauthenticated", "unauthenticated", 401, "Authentication required")
InvalidCredentials = _error("InvalidCredentials", "invalid-credentials", 401, "Invalid username or password")
OtpRequired = _error("OtpRequired", "otp-required", 401, "A one-time code from your authenticator is required")
OtpEnrollmentRequired = _error(
    "OtpEnrollmentRequired", "otp-enrollment-required", 401,
    "Two-factor sign-in must be set up for this account first (POST /v1/auth/totp/enroll)",
)
PasswordChangeRequired = _error(
    "PasswordChangeRequired", "password-change-required", 401,
    "The initial password must be changed first (POST /v1/auth/password)",
)
Forbidden = _error("Forbidden", "forbidden", 403, "Not allowed")
# 429 with `extra["retry_after"]` (whole seconds), which the API also sends as the Retry-After header.
RateLimited = _error("RateLimited", "rate-limited", 429, "Too many attempts; try again later")
NotFound = _error("NotFound", "not-found", 404, "Not found")
PayloadTooLarge = _error("PayloadTooLarge", "payload-too-large", 413, "The upload exceeds the size limit")
EmptyUpload = _error("EmptyUpload", "empty-upload", 422, "The uploaded file is empty")
TruncatedUpload = _error("TruncatedUpload", "truncated-upload", 400, "The upload ended before it was complete")
UnsupportedMediaType = _error(
    "UnsupportedMediaType", "unsupported-media-type", 415, "The file's content is not an accepted kind"
)
ContentMismatch = _error(
    "ContentMismatch", "content-mismatch", 415, "The file's bytes do not match its declared type"
)
CredentialsInUrl = _error("CredentialsInUrl", "credentials-in-url", 400, "Credentials must never be sent in the URL")
IntegrityFailure = _error(
    "IntegrityFailure", "integrity-failure", 500, "Stored data failed its integrity check"
)
AuditUnavailable = _error("AuditUnavailable", "audit-unavailable", 503, "The audit trail is unavailable")
# PIPL-1: processing refused until the patient gives (or re-gives, on the current notice) a required consent;
# at registration the same problem is a 422 and nothing is stored.
ConsentRequired = _error(
    "ConsentRequired", "consent-required", 403, "Consent to the current privacy notice is required"
)
RegistrationConsentRequired = type("RegistrationConsentRequired", (ConsentRequired,),
                                   {"status": 422, "__doc__": "Registration without both separate consents"})
# Real-name verification (vault/patients/realname.py): registration without proof of control of the phone, and a
# provider that cannot be reached (nothing is registered).
RealNameUnverified = _error(
    "RealNameUnverified", "realname-unverified", 403, "Proof of control of the phone number is required"
)
RealNameUnavailable = _error(
    "RealNameUnavailable", "realname-unavailable", 503, "Real-name verification is unavailable; try again later"
)
OcrDeclined = _error("OcrDeclined", "ocr-declined", 409, "Automatic lab-sheet reading (OCR) was declined")
