"""AC-1 / AC-3: which roles may call each endpoint (the table the role matrix test and the consent tests read)."""

from __future__ import annotations

PUBLIC = {("GET", "/healthz"), ("POST", "/v1/patients/register"), ("POST", "/v1/auth/login"),
          ("POST", "/v1/auth/totp/enroll"), ("POST", "/v1/auth/totp/activate"), ("POST", "/v1/auth/password"),
          ("GET", "/v1/privacy-notice"), ("GET", "/readyz")}
STAFF = ("doctor", "escort", "auditor", "sysadmin", "secadmin", "auditadmin")
ROLES = ("patient", *STAFF)
AUDITORS = {"auditor", "auditadmin"}
EXPECTED = {
    ("POST", "/v1/auth/logout"): set(ROLES),
    ("GET", "/v1/patients/me"): {"patient"},
    ("GET", "/v1/patients/me/access-log"): {"patient"},
    ("POST", "/v1/records"): {"patient"},
    ("GET", "/v1/records"): {"patient"},
    ("GET", "/v1/records/{record_id}"): {"patient", "doctor"},  # the doctor holds a view grant on this record
    ("GET", "/v1/records/{record_id}/content"): {"patient"},
    ("GET", "/v1/audit/events"): AUDITORS,
    ("POST", "/v1/audit/exports"): AUDITORS,
    ("GET", "/v1/audit/exports/{export_id}"): AUDITORS,
    ("GET", "/v1/audit/exports/{export_id}/archive"): AUDITORS,
    ("POST", "/v1/grants"): {"patient"},
    ("GET", "/v1/grants"): {"patient", "doctor", "escort"},
    ("GET", "/v1/grants/{grant_id}/receipt"): {"patient", "doctor"},
    ("DELETE", "/v1/grants/{grant_id}"): {"patient"},
    ("GET", "/v1/shared"): {"doctor", "escort"},
    ("POST", "/v1/breakglass"): {"doctor"},
    ("PATCH", "/v1/records/{record_id}/lab-results"): {"patient"},
    ("GET", "/v1/records/{record_id}/lab-results/history"): {"patient"},
    ("GET", "/v1/patients/me/lab-trends"): {"patient"},
    ("POST", "/v1/records/{record_id}/lab-results/extraction"): {"patient"},
    ("GET", "/v1/patients/me/consents"): {"patient"},
    ("POST", "/v1/patients/me/consents"): {"patient"},
    ("DELETE", "/v1/patients/me"): {"patient"},  # erasure: run as a second patient (`eraser`)
    ("GET", "/v1/keys/status"): {"secadmin"} | AUDITORS,  # the auditor sees key status but cannot act
    ("GET", "/v1/keys/rotations"): {"secadmin"} | AUDITORS,
    ("GET", "/v1/keys/rotations/{request_id}"): {"secadmin"} | AUDITORS,
    ("POST", "/v1/keys/rotations"): {"secadmin"},  # 409 while another request is open: allowed, not denied
    ("POST", "/v1/keys/rotations/{request_id}/approve"): {"secadmin"},  # requested by a second secadmin (below)
    ("GET", "/v1/accounts"): {"sysadmin"},  # AC-3: sysadmin manages accounts, secadmin roles, auditadmin nothing
    ("POST", "/v1/accounts"): {"sysadmin"},
    ("PATCH", "/v1/accounts/{account_id}"): {"sysadmin"},
    ("POST", "/v1/accounts/{account_id}/unlock"): {"sysadmin"},
    ("PUT", "/v1/accounts/{account_id}/role"): {"secadmin"},
    ("GET", "/v1/policy"): {"secadmin"} | AUDITORS,
}
