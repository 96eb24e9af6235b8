"""Installed in every Python subprocess of the test suite through PYTHONPATH (tests/helpers/egress.py): the same
no-egress guard as in the test process, logging attempts to $HV_TEST_EGRESS_LOG. Does nothing without that variable,
so it never changes a Python run outside the suite."""

import os
import sys

if os.environ.get("HV_TEST_EGRESS_LOG"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/helpers
    try:
        import egress
    finally:
        del sys.path[0]
    egress.install(subprocesses=False)
