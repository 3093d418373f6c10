"""The viewer's web app: server-rendered pages (FastAPI + Jinja2) over one run's MongoDB and
its ``runs/<name>/`` files. Read-only: every route is a GET.

Routes: ``/`` (the run: steps, held-out eval, record counts, the records table with filters),
``/records/<id>`` (one trajectory, turn by turn), ``/runs/<name>`` (the steps of another run
under ``output_dir``), ``/api/calls/<id>/tokens`` (token text, fetched by the record page).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, RecordStatus
from agentrl.status import counts_by_split_epoch
from agentrl.viewer.auth import basic_auth_dependency
from agentrl.viewer.pages import call_views, split_attempts
from agentrl.viewer.queries import (
    RecordFilter,
    call_token_ids,
    filter_choices,
    get_record,
    get_task,
    list_records,
    record_calls,
)
from agentrl.viewer.runs import STEP_COLUMNS, list_runs, read_summary, run_eval, run_steps
from agentrl.viewer.tokens import TokenText

PAGE_SIZE = 50
"""Records per page of the records table."""

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _num(value: Any, digits: int = 3) -> str:
    """A table cell: a float to ``digits`` significant digits, ``-`` for None/NaN, else text."""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "-"
    return "-" if value is None else str(value)


TEMPLATES.env.filters["num"] = _num
TEMPLATES.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, default=str)


def _not_found(request: Request, what: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "not_found.html", {"what": what},
                                      status_code=404)


def _run_context(config: AgentTrainingConfig, name: str) -> dict[str, Any]:
    run_dir = Path(config.output_dir) / name
    summary = read_summary(run_dir)
    return {"run_name": name, "steps": run_steps(run_dir), "step_columns": STEP_COLUMNS,
            "eval": run_eval(summary), "summary": summary}


def _index_context(
    config: AgentTrainingConfig, dbs: Databases, where: RecordFilter, page: int
) -> dict[str, Any]:
    rows, total = list_records(dbs, where, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    statuses = [s.value for s in RecordStatus]
    return {
        **_run_context(config, config.name),
        "db_name": config.db_name,
        "runs": list_runs(Path(config.output_dir)),
        "counts": counts_by_split_epoch(dbs, Record, statuses),
        "statuses": statuses,
        "choices": filter_choices(dbs),
        "where": where,
        "records": rows,
        "total": total,
        "page": page,
        "pages": max(1, math.ceil(total / PAGE_SIZE)),
    }


def create_app(
    config: AgentTrainingConfig,
    dbs: Databases,
    credentials: list[tuple[str, str]] | None = None,
    token_text: TokenText | None = None,
) -> FastAPI:
    """The viewer app for the run of ``config``.

    Args:
        config: the run's configuration (MongoDB database, ``output_dir``, ``name``, model).
        dbs: open connections (only read).
        credentials: basic-auth ``(user, password)`` pairs; empty or ``None``: no auth.
        token_text: decodes token ids (default: the tokenizer of ``config``'s model).

    Returns:
        The FastAPI app (serve it with uvicorn).
    """
    dependencies = [Depends(basic_auth_dependency(credentials))] if credentials else []
    app = FastAPI(title="agentrl viewer", dependencies=dependencies, docs_url=None,
                  redoc_url=None, openapi_url=None)
    tokens = token_text or TokenText(config.model_name_or_path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _not_found(request, request.url.path)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse)
    def index(
        request: Request,
        split: str = "",
        epoch: str = "",
        status: str = "",
        errors: bool = False,
        page: int = Query(1, ge=1),  # noqa: B008
    ) -> Response:
        where = RecordFilter(split=split, epoch=int(epoch) if epoch.lstrip("-").isdigit()
                             else None, status=status, errors_only=errors)
        return TEMPLATES.TemplateResponse(request, "index.html",
                                          _index_context(config, dbs, where, page))

    @app.get("/records/{record_id:path}", response_class=HTMLResponse)
    def record_page(request: Request, record_id: str) -> Response:
        record = get_record(dbs, record_id)
        if record is None:
            return _not_found(request, f"record {record_id}")
        own, others = split_attempts(record, record_calls(dbs, record_id))
        return TEMPLATES.TemplateResponse(request, "record.html", {
            "run_name": config.name,
            "record": record,
            "task": get_task(dbs, str(record.get("task_id", ""))),
            "calls": call_views(own),
            "earlier_calls": call_views(others),
        })

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(request: Request, name: str) -> Response:
        if name not in list_runs(Path(config.output_dir)):
            return _not_found(request, f"run {name}")
        return TEMPLATES.TemplateResponse(request, "run.html", _run_context(config, name))

    @app.get("/api/calls/{call_id}/tokens")
    def call_tokens(call_id: str) -> Response:
        ids = call_token_ids(dbs, call_id)
        if ids is None:
            return JSONResponse({"detail": f"no call {call_id}"}, status_code=404)
        return JSONResponse({"tokens": tokens.decode(ids), "unavailable": tokens.unavailable})

    return app
