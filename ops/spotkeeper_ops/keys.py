"""Managing gateway API keys: ``spotkeeper keys --table <state table> create|disable|enable|list``.

``create`` prints the new key once (it is stored only as its SHA-256) and, with ``--usage-plan-id``, creates
the API Gateway API key the usage plan throttles this client by and attaches it to the plan. The client
never sees that API Gateway key: the authorizer hands it to API Gateway (ApiKeySourceType AUTHORIZER).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from typing import Any, TextIO

from spotkeeper.gateway.auth import ApiKeyRecord, ApiKeyStore, hash_prefix, key_hash, new_api_key

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")


def _valid_name(value: str) -> str:
    if not value or len(value) > 64 or not set(value) <= _NAME_CHARS:
        raise argparse.ArgumentTypeError("name: 1-64 characters among letters, digits and -_.@")
    return value


def create_key(store: ApiKeyStore, name: str, apigateway: Any | None = None, usage_plan_id: str | None = None) -> str:
    """A new key for ``name``; returns the key, which exists nowhere else afterwards."""
    key = new_api_key()
    digest = key_hash(key)
    usage_key = api_key_id = None
    if usage_plan_id:
        if apigateway is None:
            raise ValueError("an API Gateway client is needed to attach the key to a usage plan")
        usage_key = secrets.token_urlsafe(30)
        created = apigateway.create_api_key(
            name=f"spotkeeper-{name}-{hash_prefix(digest)}", enabled=True, value=usage_key
        )
        api_key_id = created["id"]
        apigateway.create_usage_plan_key(usagePlanId=usage_plan_id, keyId=api_key_id, keyType="API_KEY")
    store.add(
        ApiKeyRecord(
            key_hash=digest, name=name, enabled=True, usage_key=usage_key, api_key_id=api_key_id, created_at=time.time()
        )
    )
    return key


def find_by_prefix(store: ApiKeyStore, prefix: str) -> ApiKeyRecord:
    prefix = prefix.lower()
    if len(prefix) < 6:
        raise ValueError("give at least 6 characters of the key's hash")
    matches = [record for record in store.all() if record.key_hash.startswith(prefix)]
    if len(matches) != 1:
        raise ValueError(f"{len(matches)} keys have a hash starting with {prefix!r}; give a longer prefix")
    return matches[0]


def set_enabled(store: ApiKeyStore, record: ApiKeyRecord, enabled: bool, apigateway: Any | None = None) -> None:
    store.set_enabled(record.key_hash, enabled)
    if apigateway is not None and record.api_key_id:
        apigateway.update_api_key(
            apiKey=record.api_key_id,
            patchOperations=[{"op": "replace", "path": "/enabled", "value": "true" if enabled else "false"}],
        )


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="spotkeeper keys", description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="the stack's state table name")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, type=_valid_name, help="who the key is for")
    create.add_argument("--usage-plan-id", help="attach the key to this API Gateway usage plan")
    for command in ("disable", "enable"):
        change = commands.add_parser(command, help=f"{command} a key, named by the start of its hash")
        change.add_argument("--hash-prefix", required=True)
    commands.add_parser("list", help="list keys (hash prefix, name, enabled)")
    args = parser.parse_args(argv)

    import boto3

    store = ApiKeyStore(boto3.resource("dynamodb").Table(args.table))
    if args.command == "create":
        apigateway = boto3.client("apigateway") if args.usage_plan_id else None
        key = create_key(store, args.name, apigateway, args.usage_plan_id)
        print(key, file=out)
        print("Store this key now: it is not kept anywhere and cannot be shown again.", file=err)
        return 0
    if args.command in ("disable", "enable"):
        try:
            record = find_by_prefix(store, args.hash_prefix)
        except ValueError as error:
            print(f"error: {error}", file=err)
            return 2
        apigateway = boto3.client("apigateway") if record.api_key_id else None
        set_enabled(store, record, args.command == "enable", apigateway)
        print(f"{hash_prefix(record.key_hash)} {record.name}: {args.command}d", file=out)
        return 0
    for record in store.all():
        state = "enabled" if record.enabled else "disabled"
        print(f"{hash_prefix(record.key_hash)}\t{record.name}\t{state}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
