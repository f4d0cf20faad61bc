"""Stored experiment evaluations ("looks"), as the daemon made them (private)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ._telemetry_tables import ExperimentLook
from .store import dumps, parse_dt

__all__ = ["LOOKS", "look_row", "record_look", "looks_of"]

LOOKS = ExperimentLook.__table__  # type: ignore[attr-defined]


def look_row(experiment_id: int, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The ``experiment_looks`` row of an evaluation dict (:meth:`Evaluation.to_dict`)."""
    cmp = evaluation.get("comparison") or {}
    srm = evaluation.get("srm") or {}
    return {
        "experiment_id": experiment_id,
        "evaluated_at": parse_dt(evaluation["evaluated_at"]),
        "decision": str(evaluation["decision"]),
        "lift": cmp.get("lift"),
        "ci_low": cmp.get("ci_low"),
        "ci_high": cmp.get("ci_high"),
        "p_value": cmp.get("p_value"),
        "units_champion": int((evaluation.get("champion") or {}).get("n_units") or 0),
        "units_challenger": int((evaluation.get("challenger") or {}).get("n_units") or 0),
        "srm_p_value": srm.get("p_value"),
        "evaluation_json": dumps(evaluation),
    }


def record_look(conn: Connection, experiment_id: int, evaluation: dict[str, Any]) -> None:
    """Store one evaluation of an experiment."""
    conn.execute(LOOKS.insert().values(**look_row(experiment_id, evaluation)))


def looks_of(conn: Connection, experiment_id: int) -> list[dict[str, Any]]:
    """Every stored look of an experiment, oldest first (``evaluation`` decoded)."""
    out = []
    for row in conn.execute(select(LOOKS).where(LOOKS.c.experiment_id == experiment_id)
                            .order_by(LOOKS.c.evaluated_at, LOOKS.c.id)):
        d = dict(row._mapping)
        d["evaluation"] = json.loads(d.pop("evaluation_json"))
        out.append(d)
    return out
