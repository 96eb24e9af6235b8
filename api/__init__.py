"""HTTP edge of the vault: FastAPI app, routers, identity dependencies, problem+json errors.

Routers stay thin: they parse and validate input, call one `vault` service function and shape the response. The API
never imports kms internals and never decides access itself: the vault gate does.
"""
