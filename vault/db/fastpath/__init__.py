"""The SQLite read fast path, behind one seam.

`DatabaseLane` (lane.py) is what the API calls: `await lane.run(work, ...)` runs a hot read, `lane.session()` inside it
gives the read's session. `HotStatement` (statements.py) is what services use for the few statements every hot read
runs. Nothing else here is meant to be imported: the batching, the shared transaction and the deferred audit events are
the lane's own (docs/performance.md, fourth round).
"""

from vault.db.fastpath.lane import DatabaseLane
from vault.db.fastpath.statements import HotStatement

__all__ = ["DatabaseLane", "HotStatement"]
