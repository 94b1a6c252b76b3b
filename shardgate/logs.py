"""One structured line per notable event: readable text by default, JSON with --log-format json."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

_format = "text"
_role = "shardgate"
_stream: TextIO = sys.stderr


def configure(*, role: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    global _format, _role, _stream
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    _format, _role = fmt, role
    if stream is not None:
        _stream = stream


def log_event(event: str, level: str = "info", **fields: object) -> None:
    now = time.time()
    if _format == "json":
        record = {"ts": round(now, 6), "level": level, "role": _role, "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"))
    else:
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        )
        extras = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        line = f"{stamp} {level:<5} {_role} {event}" + (f" {extras}" if extras else "")
    try:
        print(line, file=_stream, flush=True)
    except (OSError, ValueError):
        pass  # a closed log stream must never take the server down


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text
