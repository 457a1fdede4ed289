"""A small bridge built with mautrix (PyPI), run by server/tests/it/appservice.rs.

It registers its bot and two puppets, joins the rooms its bot is invited to, answers
"!echo TEXT" by sending "echo: TEXT" as its puppet @bridge_alice, creates a portal room when
an alias #bridge_portal_*:DOMAIN is queried, and appends everything it is sent (events,
ephemeral events, to-device messages) to a log file, one JSON object a line, so that the test
can check what arrived, in which order, and how many times.

Usage: bridge.py HOMESERVER_URL DOMAIN PORT AS_TOKEN HS_TOKEN LOG_FILE
"""

import asyncio
import json
import logging
import sys

from mautrix.appservice import AppService
from mautrix.appservice.state_store.memory import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.types import EventType, Membership, RoomCreatePreset


class Store(MemoryStateStore, ASStateStore):
    """Room state and registered users in memory: the bridge keeps nothing between runs."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


homeserver, domain, port, as_token, hs_token, log_path = sys.argv[1:7]
PUPPETS = ["bridge_alice", "bridge_bob"]

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
log_file = open(log_path, "a", buffering=1)


def record(entry: dict) -> None:
    log_file.write(json.dumps(entry) + "\n")


async def query_alias(alias: str):
    localpart = alias[1:].split(":", 1)[0]
    if not localpart.startswith("bridge_portal_"):
        return None
    room_id = await az.intent.create_room(
        alias_localpart=localpart, preset=RoomCreatePreset.PUBLIC, name=f"Portal {localpart}"
    )
    record({"kind": "portal", "alias": alias, "room_id": room_id})
    # Any non-empty answer is a 200 (mautrix answers an empty one 404).
    return {"created": room_id}


async def query_user(user_id: str):
    localpart = user_id[1:].split(":", 1)[0]
    if not localpart.startswith("bridge_"):
        return None
    await az.intent.user(user_id).ensure_registered()
    record({"kind": "user_queried", "user_id": user_id})
    return {"registered": user_id}


az: AppService = None


def plain(content) -> dict:
    """An event's content as JSON, whatever mautrix made of it."""
    try:
        value = content.serialize()
    except AttributeError:
        value = content
    return jsonable(value)


def jsonable(value):
    """mautrix's serialised receipts keep enum keys (ReceiptType): JSON wants strings."""
    if isinstance(value, dict):
        return {str(getattr(k, "value", k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return jsonable(value.serialize())
    except AttributeError:
        return str(value)


async def on_event(event) -> None:
    kind = "ephemeral" if event.type.is_ephemeral else "event"
    content = plain(event.content)
    entry = {"kind": kind, "type": str(event.type)}
    if kind == "event":
        entry.update(
            event_id=event.event_id,
            room_id=event.room_id,
            sender=event.sender,
            body=content.get("body") if isinstance(content, dict) else None,
        )
    else:
        entry["room_id"] = getattr(event, "room_id", None)
        entry["content"] = content
    record(entry)
    if kind != "event":
        return
    if event.type == EventType.ROOM_MEMBER and event.state_key == az.bot_mxid:
        if event.content.membership == Membership.INVITE:
            await az.intent.join_room(event.room_id)
    elif event.type == EventType.ROOM_MESSAGE and (entry["body"] or "").startswith("!echo "):
        puppet = az.intent.user(f"@bridge_alice:{domain}")
        await puppet.ensure_joined(event.room_id)
        await puppet.send_text(event.room_id, "echo: " + entry["body"][len("!echo ") :])


async def on_to_device(event) -> None:
    record(
        {
            "kind": "to_device",
            "type": str(event.type),
            "sender": event.sender,
            "to_user_id": event.to_user_id,
            "to_device_id": event.to_device_id,
            "content": plain(event.content),
        }
    )


async def main() -> None:
    global az
    az = AppService(
        server=homeserver,
        domain=domain,
        as_token=as_token,
        hs_token=hs_token,
        bot_localpart="bridgebot",
        id="testbridge",
        query_alias=query_alias,
        query_user=query_user,
        ephemeral_events=True,
        encryption_events=True,
        state_store=Store(),
    )
    az.matrix_event_handler(on_event)
    az.to_device_handler = on_to_device
    await az.start(host="127.0.0.1", port=int(port))
    await az.intent.ensure_registered()
    for localpart in PUPPETS:
        puppet = az.intent.user(f"@{localpart}:{domain}")
        await puppet.ensure_registered()
        await puppet.set_displayname(localpart.replace("bridge_", "").title() + " (bridged)")
    ping_ms = await az.ping_self("weft-test-ping")
    record({"kind": "ready", "ping_ms": ping_ms})
    await asyncio.Event().wait()


asyncio.run(main())
