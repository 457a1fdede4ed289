"""Checks a LiveKit access token with LiveKit's own verifier (PyPI livekit-api), as an SFU
would, and prints what it grants as JSON; exits non-zero when the token does not verify.

Usage: verify.py API_KEY API_SECRET TOKEN [ROOM_ID SLOT_ID]
With ROOM_ID and SLOT_ID it also prints `expected_room`, the LiveKit room name MSC4195 and
lk-jwt-service derive for them (unpadded base64 of SHA-256 over the compact JSON array).
"""

import base64
import dataclasses
import hashlib
import json
import sys

from livekit.api import TokenVerifier


def pseudonym(*parts):
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return base64.b64encode(digest).decode().rstrip("=")


def main():
    key, secret, token = sys.argv[1:4]
    try:
        claims = TokenVerifier(key, secret).verify(token)
    except Exception as e:  # the verifier's refusal, whatever its kind
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    out = {
        "identity": claims.identity,
        "name": claims.name,
        "video": dataclasses.asdict(claims.video),
    }
    if len(sys.argv) >= 6:
        out["expected_room"] = pseudonym(sys.argv[4], sys.argv[5])
    if len(sys.argv) >= 8:
        # An identity derived from more parts (MSC4195: user, member; lk-jwt-service: user,
        # device, member).
        out["expected_identity"] = pseudonym(*sys.argv[6:])
    print(json.dumps(out))


main()
