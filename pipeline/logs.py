"""Log levels of the ``stationcast`` command: its own loggers at INFO, third-party libraries (kafka,
apscheduler, urllib3, ...) at WARNING, so a normal run shows what the service does and not the client's
chatter; ``-v`` adds their INFO and our DEBUG, ``-vv`` everything."""

from __future__ import annotations

import logging
import sys

OWN = ("stationcast", "pipeline", "forecaster", "bench")
# kafka-python's own event-loop timing diagnostic: a busy CPU (training beside the service) trips it, and it
# tells an operator nothing they can act on. Shown again with -v.
DIAGNOSTICS = ("kafka.net.selector",)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted: tests and tools swap (and close) it."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Root (every third-party logger) at WARNING / INFO / DEBUG for 0 / 1 / 2+ ``-v``; ours at INFO, else DEBUG."""
    third_party = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    logging.basicConfig(level=third_party, format=FORMAT, handlers=[_Stderr()], force=True)
    for name in OWN:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity else logging.INFO)
    for name in DIAGNOSTICS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity else logging.ERROR)
