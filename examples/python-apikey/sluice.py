"""Small helpers over the bindings componentize-py generates for `wit/plugin.wit`.

The generated API is complete but low level: header values are `bytes` (WIT `list<u8>`),
answers are `Action_Continue()` / `Action_Respond(Response(...))`, and a WIT
`result<_, string>` error is the exception `componentize_py_types.Err(message)`. `init`
returns the hooks the plugin implements (contract 0.2.0): `ALL_HOOKS`, or only
`Hooks.ON_REQUEST` / `Hooks.ON_RESPONSE`; the gateway calls no other. These helpers
make a plugin read like ordinary Python; use the generated modules directly for anything else.
"""

import functools
import json
from typing import Iterable, Mapping, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Action,
    Action_Continue,
    Action_Respond,
    Header,
    Hooks,
    Level,
    Request,
    Response,
    ResponseHead,
)

__all__ = [
    "ALL_HOOKS",
    "Action",
    "CONTINUE",
    "Err",
    "Hooks",
    "Level",
    "Request",
    "ResponseHead",
    "errors_as_err",
    "fail",
    "header_bytes",
    "header_text",
    "json_response",
    "log",
    "respond",
    "set_header",
    "to_bytes",
]

Text = Union[str, bytes]

#: `on_request`'s "go on" answer.
CONTINUE: Action = Action_Continue()

#: What `init` returns for a plugin that implements both `on_request` and `on_response`.
ALL_HOOKS: Hooks = Hooks.ON_REQUEST | Hooks.ON_RESPONSE


def to_bytes(value: Text) -> bytes:
    """Header values and bodies are bytes on the wire: `str` is encoded as UTF-8, bytes-like
    values (`bytes`, `bytearray`, `memoryview`) are copied as they are. Anything else raises
    TypeError (an int is not taken as a length of zero bytes, as `bytes(7)` would)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    try:
        return bytes(memoryview(value))
    except TypeError:
        raise TypeError(f"expected str or bytes, not {type(value).__name__}") from None


def _header_value(name: str, value: Text) -> bytes:
    """`to_bytes` for the value of header `name`, whose name any TypeError names."""
    if value.__class__ is bytes:
        return value
    try:
        return to_bytes(value)
    except TypeError as e:
        raise TypeError(f"header `{name}`: {e}") from None


# The hooks run on every request, in CPython inside wasm, where an extra call or `encode`
# costs tenths of a microsecond; so the per-request helpers keep their common case short: a
# value that is already `bytes` goes to the gateway as it is. A plugin that sets the same
# value on every request encodes it once (in `init` or at module level) and passes the bytes.


def header_bytes(target: Union[Request, ResponseHead], name: str) -> Optional[bytes]:
    """The first value of a header as raw bytes, or None."""
    return target.header(name)


def header_text(target: Union[Request, ResponseHead], name: str) -> Optional[str]:
    """The first value of a header as text, or None. Bytes that are not UTF-8 become U+FFFD
    instead of raising: a client's bad header must never crash the plugin."""
    value = target.header(name)
    return None if value is None else value.decode("utf-8", errors="replace")


def set_header(target: Union[Request, ResponseHead], name: str, value: Text) -> None:
    """Replaces every value of a header: `bytes` as they are, `str` encoded as UTF-8 (for a
    value that is the same on every request, encode it once and pass the bytes). Raises
    `Err(reason)` if the gateway refuses the name or value; left uncaught, that fails the call
    with the reason (the plugin's failure policy decides what the client gets)."""
    target.set_header(name, value if value.__class__ is bytes else _header_value(name, value))


def respond(
    status: int,
    body: Text = b"",
    headers: Union[Mapping[str, Text], Iterable[Tuple[str, Text]]] = (),
) -> Action:
    """An `on_request` answer that replies to the client without calling the upstream."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    try:
        body = to_bytes(body)
    except TypeError as e:
        raise TypeError(f"body: {e}") from None
    return Action_Respond(
        Response(
            status=status,
            headers=[Header(name=n.lower(), value=_header_value(n, v)) for n, v in items],
            body=body,
        )
    )


def json_response(status: int, value: object, headers: Mapping[str, Text] = {}) -> Action:
    """`respond` with a JSON body and `content-type: application/json`."""
    all_headers = {"content-type": "application/json", **headers}
    return respond(status, json.dumps(value, separators=(",", ":")) + "\n", all_headers)


def log(level: Level, message: str) -> None:
    """A line in the gateway's log, tagged with the plugin's name."""
    host.log(level, message)


def fail(message: str) -> Err:
    """The exception that makes an export return WIT `err(message)`: `raise fail("...")`."""
    return Err(message)


def errors_as_err(method):
    """Decorator for the hooks of `WitWorld`: an unexpected exception (a bug, a KeyError...)
    becomes WIT `err("KeyError: 'x'")`, so the gateway reports the reason and keeps the
    instance. Without it, any exception other than `Err` traps the instance: the client gets
    `trapped: wasm unreachable`, and the traceback is only in the gateway's log."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Err:
            raise
        except Exception as e:
            raise Err(f"{type(e).__name__}: {e}") from e

    return wrapper
