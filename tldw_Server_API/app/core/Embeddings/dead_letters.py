"""The dead-letter queues of the Redis pipeline as operators see them: one stream per stage,
`embeddings:{stage}:dlq` (the very name the workers write, `worker_config.StreamNames.dlq`), its
entries from `messages.dead_letter_fields`, and the operator's state of each entry in the hash
`embeddings:{stage}:dlq:state`: `quarantined` (where every entry starts), `approved_for_requeue`
(needs a note saying why), `ignored` (purgeable), and `requeued` once requeued.

Reads: per-stage stats (depth, oldest, counts by error code and by state), OpenAI-style list pages
with the payload left out, one entry in full with its payload decrypted (`dlq_crypto`). Writes:
state changes, marking entries requeued, purging ignored entries. What a requeue does to the job
is the operator service's business (`services/pipeline_operations.py`); this module only holds the
entries. Redis calls only; no jobs DB.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from tldw_Server_API.app.core.Embeddings.dlq_crypto import DLQCrypto
from tldw_Server_API.app.core.Embeddings.messages import dead_letter_aad, text_of
from tldw_Server_API.app.core.Embeddings.worker_config import STAGES, StreamNames
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound

OPERATOR_STATES = ("quarantined", "approved_for_requeue", "ignored")
INITIAL_STATE = "quarantined"
REQUEUED = "requeued"
MAX_NOTE = 1000
_SCAN = 10_000   # entries read for stats and purges per call


@dataclass(frozen=True)
class DeadLetter:
    id: str
    stage: str
    original_id: str
    job_id: str
    error: str
    code: str
    attempts: int
    failed_at: str
    state: str
    note: str | None
    state_by: str | None
    state_at: str | None
    encrypted: bool
    payload: str | None = None        # only when read in full

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        values: dict[str, Any] = {
            "id": self.id, "object": "embedding.dead_letter", "stage": self.stage, "original_id": self.original_id,
            "job_id": self.job_id, "error": self.error, "code": self.code, "attempts": self.attempts,
            "failed_at": self.failed_at, "state": self.state, "note": self.note, "state_changed_by": self.state_by,
            "state_changed_at": self.state_at, "encrypted": self.encrypted,
        }
        if full:
            values["payload"] = self.payload
        return values


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise InvalidInput(f"stage must be one of {', '.join(STAGES)}", param="stage")
    return stage


class DeadLetterQueue:
    """Operator access to the dead letters of every stage (one Redis client, the pipeline's names)."""

    def __init__(self, redis: Any, names: StreamNames, crypto: DLQCrypto | None = None) -> None:
        self.redis = redis
        self.names = names
        self._crypto = crypto

    def _state_key(self, stage: str) -> str:
        return f"{self.names.dlq(stage)}:state"

    # --- reads -----------------------------------------------------------------------------------
    async def stats(self) -> list[dict[str, Any]]:
        out = []
        for stage in STAGES:
            stream = self.names.dlq(stage)
            entries = await self.redis.xrange(stream, count=_SCAN)
            states = await self._states(stage)
            letters = [self._letter(stage, entry_id, fields, states) for entry_id, fields in entries]
            out.append({
                "stage": stage, "depth": int(await self.redis.xlen(stream)),
                "oldest_failed_at": letters[0].failed_at if letters else None,
                "by_error": dict(Counter(letter.code for letter in letters)),
                "by_state": dict(Counter(letter.state for letter in letters)),
            })
        return out

    async def page(self, stage: str, limit: int = 20, after: str | None = None) -> tuple[list[DeadLetter], bool]:
        """Oldest first, `limit` entries strictly after the entry id `after`."""
        check_stage(stage)
        if not 1 <= limit <= 100:
            raise InvalidInput("limit must be between 1 and 100", param="limit")
        start = f"({after}" if after else "-"
        try:
            entries = await self.redis.xrange(self.names.dlq(stage), min=start, max="+", count=limit + 1)
        except Exception as exc:  # noqa: BLE001 - Redis refuses a malformed id: the caller's cursor
            if "Invalid stream ID" in str(exc):
                raise InvalidInput("after must be a dead letter id", param="after") from None
            raise
        states = await self._states(stage)
        letters = [self._letter(stage, entry_id, fields, states) for entry_id, fields in entries]
        return letters[:limit], len(letters) > limit

    async def get(self, stage: str, letter_id: str, *, full: bool = True) -> DeadLetter:
        check_stage(stage)
        fields = await self._fields(stage, letter_id)
        letter = self._letter(stage, letter_id, fields, await self._states(stage, letter_id))
        if not full:
            return letter
        data = fields.get(b"data", fields.get("data")) or b""
        payload: str
        if DLQCrypto.is_encrypted(data):
            if self._crypto is None:
                raise Conflict("this payload is encrypted and EMBEDDINGS_DLQ_ENCRYPTION_KEY is not set",
                               param="id", code="dlq_key_missing")
            clear = self._crypto.decrypt(data, aad=dead_letter_aad(stage, letter.original_id))
            payload = clear.decode("utf-8", "replace")
        else:
            payload = text_of(data)
        return replace(letter, payload=payload)

    # --- writes ----------------------------------------------------------------------------------
    async def set_state(self, stage: str, letter_id: str, state: str, note: str | None, by: str) -> DeadLetter:
        check_stage(stage)
        if state not in OPERATOR_STATES:
            raise InvalidInput(f"state must be one of {', '.join(OPERATOR_STATES)}", param="state")
        note = (note or "").strip() or None
        if state == "approved_for_requeue" and not note:
            raise InvalidInput("approving a dead letter for requeue needs a note saying what was fixed",
                               param="note")
        if note and len(note) > MAX_NOTE:
            raise InvalidInput(f"note is longer than {MAX_NOTE} characters", param="note")
        await self._fields(stage, letter_id)   # NotFound for an unknown entry
        await self._write_state(stage, letter_id, state, note, by)
        return await self.get(stage, letter_id, full=False)

    async def approved(self, stage: str, ids: list[str]) -> list[DeadLetter]:
        """The entries (without their payloads: a requeue re-runs the job's spec and never reads
        them), if every one is approved for requeue; else Conflict (409)
        naming those that are not (nothing is requeued then)."""
        check_stage(stage)
        if not ids or len(ids) > 100:
            raise InvalidInput("ids must hold 1-100 dead letter ids", param="ids")
        letters = [await self.get(stage, letter_id, full=False) for letter_id in dict.fromkeys(ids)]
        refused = [f"{letter.id} ({letter.state})" for letter in letters if letter.state != "approved_for_requeue"]
        if refused:
            raise Conflict("only entries approved for requeue can be requeued; not approved: " + ", ".join(refused),
                           param="ids", code="dlq_not_approved")
        return letters

    async def mark_requeued(self, stage: str, letter_id: str, by: str, note: str | None) -> None:
        await self._write_state(stage, letter_id, REQUEUED, note, by)

    async def purge_ignored(self, stage: str) -> int:
        """Delete the stage's entries in state `ignored`; returns how many."""
        check_stage(stage)
        states = await self._states(stage)
        ignored = [letter_id for letter_id, value in states.items() if value.get("state") == "ignored"]
        if not ignored:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xdel(self.names.dlq(stage), *ignored)
            pipe.hdel(self._state_key(stage), *ignored)
            removed, _ = await pipe.execute()
        return int(removed)

    # --- helpers ---------------------------------------------------------------------------------
    async def _fields(self, stage: str, letter_id: str) -> dict[Any, Any]:
        try:
            found = await self.redis.xrange(self.names.dlq(stage), min=letter_id, max=letter_id, count=1)
        except Exception as exc:  # noqa: BLE001 - a malformed id is the caller's
            if "Invalid stream ID" in str(exc):
                raise NotFound(f"dead letter {letter_id[:40]!r} not found", param="id") from None
            raise
        if not found:
            raise NotFound(f"dead letter {letter_id[:40]!r} not found in the {stage} stage", param="id")
        return dict(found[0][1])

    async def _states(self, stage: str, letter_id: str | None = None) -> dict[str, dict[str, Any]]:
        key = self._state_key(stage)
        if letter_id is not None:
            raw = await self.redis.hget(key, letter_id)
            return {letter_id: orjson.loads(raw)} if raw else {}
        return {text_of(k): orjson.loads(v) for k, v in (await self.redis.hgetall(key)).items()}

    async def _write_state(self, stage: str, letter_id: str, state: str, note: str | None, by: str) -> None:
        value = {"state": state, "note": note, "by": by, "at": datetime.now(UTC).isoformat()}
        await self.redis.hset(self._state_key(stage), letter_id, orjson.dumps(value))

    @staticmethod
    def _letter(stage: str, letter_id: Any, fields: Any, states: dict[str, dict[str, Any]]) -> DeadLetter:
        def field(name: str) -> str:
            return text_of(fields.get(name.encode(), fields.get(name)))

        letter_id = text_of(letter_id)
        operator = states.get(letter_id, {})
        try:
            attempts = int(field("attempts") or 0)
        except ValueError:
            attempts = 0
        data = fields.get(b"data", fields.get("data")) or b""
        return DeadLetter(
            id=letter_id, stage=stage, original_id=field("original_id"), job_id=field("job"), error=field("error"),
            code=field("code"), attempts=attempts, failed_at=field("failed_at"),
            state=operator.get("state") or INITIAL_STATE, note=operator.get("note"), state_by=operator.get("by"),
            state_at=operator.get("at"), encrypted=DLQCrypto.is_encrypted(data),
        )
