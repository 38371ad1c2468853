"""python-apikey: lets a request through only with a valid API key.

Config (JSON given to `init`; from `python-apikey.toml` beside the wasm or
`[plugin.python-apikey]` in the gateway config):

    header = "x-api-key"        # optional, the default
    keys = ["k1", "k2"]         # required, at least one

A request whose key header holds one of `keys` goes on with `x-api-key-valid: true` added and
the key header removed (the upstream never sees the key). Without a key, or with a wrong one,
the plugin answers 401 itself with a short JSON body and the upstream is not called.
"""

import hmac
import json

import wit_world
from wit_world.imports import host

import sluice
from sluice import CONTINUE, Level, Request, ResponseHead

# Parsed once per instance by `init`; pooled instances keep it for every request they serve.
HEADER = "x-api-key"
KEYS: list = []
# Header values are bytes: constant ones are encoded once, not on every request.
VALID = b"true"


def parse_config(text: str) -> tuple:
    """The (header, keys) a config asks for; raises ValueError with the reason if it is bad."""
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"config is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError("config must be a table")
    header = config.get("header", "x-api-key")
    if not isinstance(header, str) or not header.strip():
        raise ValueError("`header` must be a non-empty string")
    keys = config.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError('`keys` must list at least one key, e.g. keys = ["k1"]')
    if not all(isinstance(k, str) and k for k in keys):
        raise ValueError("every entry of `keys` must be a non-empty string")
    return header.strip().lower(), [k.encode("utf-8") for k in keys]


def key_is_valid(given: bytes) -> bool:
    """Compares against every key in constant time per key (no early exit on a match)."""
    ok = False
    for key in KEYS:
        ok |= hmac.compare_digest(given, key)
    return ok


class WitWorld(wit_world.WitWorld):
    @sluice.errors_as_err
    def init(self, config: str) -> sluice.Hooks:
        global HEADER, KEYS
        try:
            HEADER, KEYS = parse_config(config)
        except ValueError as e:
            # An `Err` raised from an export is WIT `err(...)`: the gateway refuses the config.
            raise sluice.fail(str(e)) from None
        # The hooks this plugin implements: the gateway calls only these. `on_response`
        # below does nothing, so it is not declared and never called (no call on the way
        # back); the bindings still need the method.
        return sluice.Hooks.ON_REQUEST

    @sluice.errors_as_err
    def on_request(self, request: Request) -> sluice.Action:
        given = sluice.header_bytes(request, HEADER)
        if given is None:
            host.counter_add("rejected", 1)
            return sluice.json_response(
                401, {"error": "missing API key", "header": HEADER}
            )
        if not key_is_valid(given):
            host.counter_add("rejected", 1)
            sluice.log(Level.DEBUG, f"invalid API key on {request.path()}")
            return sluice.json_response(
                401, {"error": "invalid API key", "header": HEADER}
            )
        host.counter_add("accepted", 1)
        request.remove_header(HEADER)
        sluice.set_header(request, "x-api-key-valid", VALID)
        return CONTINUE

    def on_response(self, request: Request, response: ResponseHead) -> None:
        pass  # nothing to do on the way back
