"""The vault: domain services and the one gate every PHI access passes.

One folder per domain, each with its service module(s) and what only it uses: access (the gate, the audit append,
alerts), accounts, patients (identifiers, privacy consent, erasure), records (uploads, sniffing), labs, sharing,
auditing (checkpoints, search, exports, retention) and keys (status, rotation, rewrap, retirement, key events).
Infrastructure beside them imports no domain: settings, errors, identity, fields, text, jobs, profile, `db/`
(engine, models, migrations, the SQLite read fast path) and `blobs/`; `runtime.py` is the composition root that wires
a Vault and registers the domains' job handlers, and `cli/` the command line (its `serve` module alone imports
`api`). It orchestrates kms (keys and crypto), consent (Casbin), audit (the trail) and ocr. It must never return or
persist PHI except through the gate, and never write plaintext PHI to the database, blob store or logs.
"""
