"""Key operations of the vault, one module per job: `status` (what each version wraps), `rotation` (root under the
two-person rule, patient KEKs), `rewrap` (the resumable job), `retirement` (what may be destroyed), `events` (key
events raised inside other flows, audited), and `common` (the wrapped-DEK columns and the audit helpers they share).
The key hierarchy itself (root -> patient KEK -> DEK) is kms/'s; these modules decide, audit and record."""
