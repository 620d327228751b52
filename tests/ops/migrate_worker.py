"""One "service start" for test_ops_migration_lock: wait for the start signal, then migrate the
node's schemas (store and every feature, as ``ipjms node serve`` does) and print the Alembic
revisions this process applied, one per line (``APPLIED <folder> <revision>``)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


class _Applied(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Running upgrade"):
            print("APPLIED", message, flush=True)


def main() -> None:
    url, go_file = sys.argv[1], Path(sys.argv[2])
    from node.schemas import migrate_schemas
    from servicekit.storage import make_engine

    alembic = logging.getLogger("alembic.runtime.migration")
    alembic.setLevel(logging.INFO)
    alembic.addHandler(_Applied())
    engine = make_engine(url)
    print("READY", flush=True)
    while not go_file.exists():  # both processes released at the same moment
        time.sleep(0.001)
    migrate_schemas(engine)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
