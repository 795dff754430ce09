"""`python -m tldw_Server_API.ops`: the operator's commands over a running server's admin API,
so the pipeline can be operated without curl: `dlq` (stats, list, show, approve, ignore,
quarantine, requeue, purge), `reembed`, `compact`, `audit`. It talks HTTP to the same routes
users have (`/api/v1/embeddings/...`), reached by `--base-url` / `TLDW_BASE_URL` (default
`http://127.0.0.1:8000`) with `--api-key` / `TLDW_API_KEY`, else `SINGLE_USER_API_KEY`, else the
single-user key file of `TLDW_DATA_DIR`. Prints the API's JSON; exits 1 with the API's error
message when a call fails, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from tldw_Server_API.app.core.AuthNZ.api_keys import KEY_FILE_NAME
from tldw_Server_API.app.core.config import Settings

STAGES = ("chunking", "embedding", "storage")


def resolve_api_key(given: str | None, settings: Settings) -> str | None:
    """The key a command-line tool sends: given, else TLDW_API_KEY, else SINGLE_USER_API_KEY, else
    the single-user key file of the data dir (a local server's)."""
    for secret in (settings.tldw_api_key, settings.single_user_api_key):
        if given is None and secret is not None:
            given = secret.get_secret_value()
    if given:
        return given
    path = settings.data_dir / KEY_FILE_NAME
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tldw_Server_API.ops", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base-url", default=settings.tldw_base_url,
                        help=f"the server (env TLDW_BASE_URL; default {settings.tldw_base_url})")
    parser.add_argument("--api-key", default=None, help="an admin key (env TLDW_API_KEY; else the single-user key)")
    commands = parser.add_subparsers(dest="command", required=True)

    dlq = commands.add_parser("dlq", help="dead letters of the Redis pipeline").add_subparsers(dest="action",
                                                                                              required=True)
    dlq.add_parser("stats", help="per stage: depth, oldest, counts by error and state")
    listing = dlq.add_parser("list", help="a stage's entries (payloads left out)")
    listing.add_argument("stage", choices=STAGES)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", default=None, help="the last id of the previous page")
    show = dlq.add_parser("show", help="one entry in full (payload decrypted)")
    show.add_argument("stage", choices=STAGES)
    show.add_argument("id")
    for name, state in (("approve", "approved_for_requeue"), ("ignore", "ignored"), ("quarantine", "quarantined")):
        sub = dlq.add_parser(name, help=f"set an entry's state to {state}")
        sub.add_argument("stage", choices=STAGES)
        sub.add_argument("id")
        sub.add_argument("--note", required=name == "approve", help="why (required to approve)")
        sub.set_defaults(state=state)
    requeue = dlq.add_parser("requeue", help="requeue approved entries (their jobs run again)")
    requeue.add_argument("stage", choices=STAGES)
    requeue.add_argument("ids", nargs="+")
    purge = dlq.add_parser("purge", help="delete a stage's ignored entries")
    purge.add_argument("stage", choices=STAGES)

    reembed = commands.add_parser("reembed", help="re-embed media (unchanged chunks reuse their vectors)")
    scope = reembed.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", help="whose media")
    scope.add_argument("--all", action="store_true", help="every user's media")
    reembed.add_argument("--media", type=int, default=None, help="one media item of --user")
    reembed.add_argument("--model", default=None, help="`provider:model` to embed with (default: the default)")
    reembed.add_argument("--at", default=None, help="start then (ISO 8601 with a zone)")

    commands.add_parser("compact", help="delete the vectors of soft-deleted media now")
    audit = commands.add_parser("audit", help="admin actions, newest first")
    audit.add_argument("--action", default=None)
    audit.add_argument("--user", default=None)
    audit.add_argument("--limit", type=int, default=50)
    return parser


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx kwargs) of a parsed command."""
    base = "/api/v1/embeddings"
    if args.command == "dlq":
        stage = getattr(args, "stage", None)
        match args.action:
            case "stats":
                return "GET", f"{base}/dlq/stats", {}
            case "list":
                params = {"limit": args.limit, **({"after": args.after} if args.after else {})}
                return "GET", f"{base}/dlq/{stage}", {"params": params}
            case "show":
                return "GET", f"{base}/dlq/{stage}/{args.id}", {}
            case "requeue":
                return "POST", f"{base}/dlq/{stage}/requeue", {"json": {"ids": args.ids}}
            case "purge":
                return "POST", f"{base}/dlq/{stage}/purge", {}
            case _:
                return "POST", f"{base}/dlq/{stage}/{args.id}/state", {"json": {"state": args.state, "note": args.note}}
    if args.command == "reembed":
        body: dict[str, Any] = {"all_media": True} if args.all else {"user_id": args.user}
        if args.media is not None:
            body["media_id"] = args.media
        if args.model:
            body["embedding_model"] = args.model
        if args.at:
            body["at"] = args.at
        return "POST", f"{base}/reembed/schedule", {"json": body}
    if args.command == "compact":
        return "POST", f"{base}/compactor/run", {}
    params = {"limit": args.limit, **({"action": args.action} if args.action else {}),
              **({"user_id": args.user} if args.user else {})}
    return "GET", f"{base}/audit", {"params": params}


def main(argv: list[str] | None = None) -> int:
    settings = Settings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    args = _parser(settings).parse_args(argv)
    if args.command == "reembed" and args.media is not None and not args.user:
        print("--media needs --user", file=sys.stderr)
        return 2
    method, path, kwargs = _request(args)
    key = resolve_api_key(args.api_key, settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=args.base_url, headers=headers, timeout=120) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return 1
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:500]}}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        print(f"error {response.status_code} ({error.get('code')}): {error.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
