"""AC-1 / AC-3: which roles may call each endpoint (the table the role matrix test and the consent tests read)."""

from __future__ import annotations

PUBLIC = {("GET", "/healthz"), ("POST", "/v1/patients/register"), ("POST", "/v1/patients/register/challenge"),
          ("POST", "/v1/auth/login"),
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
    ("GET", "/v1/records/{record_id}/fhir"): {"patient", "doctor"},  # 409 (no lab values in a PNG): allowed
    ("POST", "/v1/exports"): {"patient"},  # issue 16: the patient's own export (PIPL 45)
    ("GET", "/v1/exports/{package_id}"): {"patient"},
    ("GET", "/v1/exports/{package_id}/download"): {"patient"},  # 409 while building / 410 once taken: allowed
    ("GET", "/v1/audit/events"): AUDITORS,
    ("GET", "/v1/audit/public-key"): AUDITORS,
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

# The browser console (api/console): the same roles per page as the services behind them. Public pages need no
# session; every other page without one redirects to sign-in (or answers 401), and a wrong role gets 403/404.
CONSOLE_PUBLIC = {("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("GET", "/register"), ("POST", "/register"),
                  ("POST", "/register/code"),
                  ("GET", "/first-sign-in"), ("POST", "/first-sign-in/password"), ("POST", "/first-sign-in/totp"),
                  ("POST", "/first-sign-in/activate"), ("GET", "/lang/{code}")}
READERS = {"patient", "doctor"}  # the doctor holds a view + download grant on the matrix record
CONSOLE_EXPECTED = {
    ("GET", "/home"): set(ROLES),
    ("POST", "/logout"): set(ROLES),
    ("GET", "/records"): {"patient"},
    ("POST", "/records"): {"patient"},
    ("GET", "/records/{record_id}"): READERS,
    ("GET", "/records/{record_id}/trend/{row}"): READERS,
    ("GET", "/records/{record_id}/status"): READERS,
    ("GET", "/records/{record_id}/content"): READERS,
    ("GET", "/records/{record_id}/download"): READERS,  # the patient's original; the doctor's copy watermarked
    ("GET", "/records/{record_id}/history"): {"patient"},
    ("POST", "/records/{record_id}/values"): {"patient"},
    ("POST", "/records/{record_id}/extraction"): {"patient"},  # 409 for a record that is not a lab sheet: allowed
    ("GET", "/sharing"): {"patient", "doctor", "escort"},
    ("POST", "/sharing"): {"patient"},
    ("GET", "/sharing/{grant_id}"): {"patient", "doctor"},
    ("POST", "/sharing/{grant_id}/revoke"): {"patient"},
    ("GET", "/access-log"): {"patient"},
    ("GET", "/consents"): {"patient"},
    ("GET", "/account"): {"patient"},
    ("POST", "/account/erase"): {"patient"},  # run as a second patient (`cm-eraser`)
    ("GET", "/export"): {"patient"},  # issue 15/16: the patient's own export (PIPL 45), with re-authentication
    ("POST", "/export"): {"patient"},  # 409 while the matrix's own export is still being built: allowed
    ("GET", "/export/{package_id}"): {"patient"},
    ("GET", "/export/{package_id}/download"): {"patient"},  # 409 while building / 410 once taken: allowed
    ("POST", "/consents"): {"patient"},
    ("GET", "/shared"): {"doctor", "escort"},
    ("GET", "/breakglass"): {"doctor"},
    ("POST", "/breakglass"): {"doctor"},
    ("GET", "/audit"): AUDITORS,
    ("GET", "/audit/exports"): AUDITORS,
    ("POST", "/audit/exports"): AUDITORS,
    ("GET", "/audit/exports/{export_id}"): AUDITORS,
    ("GET", "/audit/exports/{export_id}/archive"): AUDITORS,
    ("GET", "/keys"): {"secadmin"} | AUDITORS,
    ("GET", "/accounts"): {"sysadmin"},  # AC-3: the sysadmin manages accounts, the secadmin roles and rotations
    ("POST", "/accounts"): {"sysadmin"},
    ("POST", "/accounts/{account_id}/active"): {"sysadmin"},
    ("POST", "/accounts/{account_id}/unlock"): {"sysadmin"},
    ("GET", "/security"): {"secadmin"},
    ("POST", "/security/role"): {"secadmin"},
    ("POST", "/security/rotations"): {"secadmin"},  # 409 while another request is open: allowed, not denied
    ("POST", "/security/rotations/{request_id}/approve"): {"secadmin"},  # requested by a second secadmin
}
