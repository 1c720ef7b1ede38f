"""Model states across workers, as ``/health`` shows them (``dispatcher.models``).

Each worker reports every model of its engine: ``missing`` (not on its machine),
``local`` (on disk, not loaded), ``loading``, ``ready`` (loaded) or ``broken``
(with the reason); ``unloaded`` (evicted to make room) counts as ``local``. The
state of a model is the best any worker has it in: ``ready`` if one has it
loaded, else ``loading``, else ``broken`` (one's reason), else ``local``, else
``missing``. Both dispatchers report the same shape::

    {"sd": {"state": "ready", "detail": None,
            "workers": {"host:123:ab12cd": {"state": "ready", "detail": None},
                        "host:124:ef34ab": {"state": "local", "detail": None}}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the aggregate's order of preference; a state not listed comes last
_RANK = ("ready", "loading", "broken", "local", "missing")


def _normal(state: str) -> str:
    return "local" if state == "unloaded" else state


def aggregate(
    workers: Mapping[str, Mapping[str, tuple[str, str | None]]],
) -> dict[str, dict[str, Any]]:
    """``workers``: each worker's name -> model -> (state, detail). Returns each model
    any worker reported, in the order first reported, with its aggregate state, the
    reason when broken, and each worker's own state."""
    seen: dict[str, dict[str, tuple[str, str | None]]] = {}
    for worker in sorted(workers):
        for model, (state, detail) in workers[worker].items():
            seen.setdefault(model, {})[worker] = (state, detail)
    out: dict[str, dict[str, Any]] = {}
    for model, by_worker in seen.items():
        best = min(
            by_worker.values(),
            key=lambda sd: _RANK.index(_normal(sd[0])) if _normal(sd[0]) in _RANK else len(_RANK),
        )
        state = _normal(best[0])
        out[model] = {
            "state": state,
            "detail": best[1] if state == "broken" else None,
            "workers": {w: {"state": s, "detail": d} for w, (s, d) in by_worker.items()},
        }
    return out
