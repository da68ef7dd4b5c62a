"""Bridges: existing trackers' events, translated into workledger events.

A team that already runs Celery or antflow adopts workledger without touching its workers:
a bridge listens to what the tracker already says and publishes the same facts to the log.

- :mod:`workledger.bridges.celery`: Celery's event stream (``celery -A app events``' source).
- :mod:`workledger.bridges.antflow`: antflow's ``StatusTracker`` callbacks.

Each needs its library only when it runs (``pip install 'workledger[bridges]'``); translating
is pure and testable without a broker.
"""

__all__: list[str] = []
