"""The vault: domain services and the one gate every PHI access passes.

Owns patients, records, uploads, identity, settings, the data database and the CLI. It orchestrates kms (keys and
crypto) and, as they arrive, consent, audit and ocr. It must never return or persist PHI except through the gate, and
never write plaintext PHI to the database, blob store or logs.
"""
