"""Admin routes that operate the pipeline, mounted under /api/v1/embeddings: dead letters (stats,
list, read in full, state changes, requeue of approved entries, purge of ignored ones), skipping a
job, changing its priority, the idempotency ledger, the audit log, re-embed schedules and the
vector compactor. Every route needs the admin role; every one that changes state, and the read of
a decrypted payload, is audited by its `AuditedAdmin` dependency (the route's `name` is the audit
action). Thin: one service call
per handler; errors go through the shared table.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Query, Request

from tldw_Server_API.app.api.v1.deps import AdminUser, AuditedAdmin, AuditLogDep, OperationsDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.embeddings_operations import (
    DeadLetterState,
    JobList,
    ListPage,
    PriorityRequest,
    ReembedRequest,
    RequeueRequest,
)
from tldw_Server_API.app.api.v1.schemas.media_embeddings import JobView

router = v1_router("embeddings-operations")
Limit = Annotated[int, Query(ge=1, le=100)]


# --- dead letters -------------------------------------------------------------------------------
@router.get("/embeddings/dlq/stats")
async def dlq_stats(_: AdminUser, operations: OperationsDep) -> dict[str, Any]:
    """Per stage: depth, oldest entry, counts by error code and by operator state."""
    return await operations.dlq_stats()


@router.get("/embeddings/dlq/{stage}", response_model=ListPage)
async def dlq_list(stage: str, _: AdminUser, operations: OperationsDep, limit: Limit = 20,
                   after: Annotated[str | None, Query(max_length=64)] = None) -> ListPage:
    """The stage's dead letters, oldest first, payloads left out."""
    letters, has_more = await operations.dlq_page(stage, limit, after)
    return ListPage.of([letter.to_dict() for letter in letters], has_more)


@router.get("/embeddings/dlq/{stage}/{letter_id}", name="dlq.read")
async def dlq_get(stage: str, letter_id: str, _: AuditedAdmin, operations: OperationsDep) -> dict[str, Any]:
    """One dead letter in full, its payload decrypted (a read of a payload is audited too)."""
    return (await operations.dlq_get(stage, letter_id)).to_dict(full=True)


@router.post("/embeddings/dlq/{stage}/requeue", name="dlq.requeue")
async def dlq_requeue(stage: str, body: RequeueRequest, request: Request, user: AuditedAdmin,
                      operations: OperationsDep) -> dict[str, Any]:
    """Requeue approved entries (409 if any is not approved): each one's failed job runs again
    from its spec, under its idempotency key."""
    results = await operations.dlq_requeue(stage, list(body.ids), user.id)
    request.state.audit_detail = {"ids": list(body.ids), "requeued": sum(r["outcome"] == "requeued" for r in results)}
    return {"object": "list", "data": results}


@router.post("/embeddings/dlq/{stage}/purge", name="dlq.purge")
async def dlq_purge(stage: str, request: Request, _: AuditedAdmin, operations: OperationsDep) -> dict[str, Any]:
    """Delete the stage's entries in state `ignored`."""
    purged = await operations.dlq_purge(stage)
    request.state.audit_detail = {"purged": purged}
    return {"stage": stage, "purged": purged}


@router.post("/embeddings/dlq/{stage}/{letter_id}/state", name="dlq.state")
async def dlq_set_state(stage: str, letter_id: str, body: DeadLetterState, request: Request, user: AuditedAdmin,
                        operations: OperationsDep) -> dict[str, Any]:
    """Quarantine, approve for requeue (a note is required) or ignore an entry."""
    request.state.audit_detail = {"state": body.state, "note": body.note}
    return (await operations.dlq_set_state(stage, letter_id, body.state, body.note, user.id)).to_dict()


# --- jobs ---------------------------------------------------------------------------------------
@router.post("/embeddings/jobs/{job_id}/skip", name="job.skip", response_model=JobView)
async def skip_job(job_id: str, _: AuditedAdmin, operations: OperationsDep) -> JobView:
    """Cancel any user's job (its messages are dropped by the stages)."""
    return JobView.of(await operations.skip_job(job_id))


@router.post("/embeddings/jobs/{job_id}/priority", name="job.priority")
async def job_priority(job_id: str, body: PriorityRequest, request: Request, _: AuditedAdmin,
                       operations: OperationsDep) -> dict[str, Any]:
    """Change a job's priority; its waiting messages move to that priority."""
    job, moved = await operations.set_priority(job_id, body.priority)
    request.state.audit_detail = {"priority": body.priority, "moved": moved}
    return {"job": JobView.of(job).model_dump(mode="json"), "moved_messages": moved}


@router.get("/embeddings/idempotency/{key}", response_model=JobList)
async def idempotency_lookup(key: str, _: AdminUser, operations: OperationsDep) -> JobList:
    """Every job created under an idempotency key (what a repeated request returned)."""
    return JobList(data=[JobView.of(job) for job in await operations.find_by_key(key)])


# --- audit --------------------------------------------------------------------------------------
@router.get("/embeddings/audit", response_model=ListPage)
async def audit_events(
    _: AdminUser, audit: AuditLogDep, action: Annotated[str | None, Query(max_length=64)] = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None, limit: Limit = 50,
    after: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[str | None, Query(max_length=64)] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> ListPage:
    """Admin actions, newest first: who did what to which target, when, and how it ended."""
    events, has_more = await asyncio.to_thread(audit.page, limit=limit, after=after, before=before, order=order,
                                               action=action, user_id=user_id)
    return ListPage.of([event.to_dict() for event in events], has_more)


# --- re-embedding and compaction -----------------------------------------------------------------
@router.post("/embeddings/reembed/schedule", name="reembed.schedule", status_code=202)
async def schedule_reembed(body: ReembedRequest, request: Request, user: AuditedAdmin,
                           operations: OperationsDep) -> dict[str, Any]:
    """Re-embed one media item (`user_id` + `media_id`), a user's media (`user_id`) or every
    user's media (`all_media`), optionally with another model and at a time (`at`): one job per
    media item, read through `GET /api/v1/media/embeddings/jobs/{id}` (as its owner) or the
    idempotency lookup. Unchanged chunks reuse their vectors."""
    jobs = await operations.schedule_reembed(user, body.scope(), body.to_options(), body.at)
    request.state.audit_detail = {"jobs": len(jobs), "model": body.embedding_model, "at": body.at}
    return {"object": "embedding.reembed", "job_ids": [job.job_id for job in jobs],
            "jobs": [JobView.of(job).model_dump(mode="json") for job in jobs],
            "scheduled_for": body.at.isoformat() if body.at else None}


@router.post("/embeddings/compactor/run", name="compactor.run")
async def run_compactor(request: Request, _: AuditedAdmin, operations: OperationsDep) -> dict[str, Any]:
    """Delete the vectors of soft-deleted media from every model's media collection, now."""
    report = await operations.run_compactor()
    request.state.audit_detail = report.to_dict()
    return report.to_dict()
