"""Config helpers shared by every role: sizes, durations, TOML files with clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

# Maximum config file size: a config is a few KB; anything larger is a mistake or hostile.
MAX_CONFIG_BYTES = 1024 * 1024

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
# Redis's units: k=1000, kb=1024, m=1000^2, mb=1024^2, g/gb likewise (redis.conf header).
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


class ConfigError(ValueError):
    """A config value or file is invalid; the message says which and why."""


def parse_size(value: str | int, *, name: str = "size") -> int:
    """Parse '256mb', '1gb', '100k', '1024' the way redis.conf does."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a size like 256mb, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name}: must not be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{name}: expected a size like 256mb, got {value!r}")
    number, unit, suffix = int(m.group(1)), m.group(2).lower(), m.group(3).lower()
    if suffix and not unit and suffix != "b":
        raise ConfigError(f"{name}: expected a size like 256mb, got {value!r}")
    base = 1024 if suffix in ("b", "ib") and unit else 1000
    factor = 1 if not unit else base ** {"k": 1, "m": 2, "g": 3, "t": 4}[unit]
    result = number * factor
    if result > 2**63 - 1:
        raise ConfigError(f"{name}: {value!r} is too large")
    return result


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, refusing huge or malformed files with a clear message."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: config file is {size} bytes, more than {MAX_CONFIG_BYTES}")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def check_keys(table: dict[str, Any], allowed: set[str], *, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def parse_port(value: object, *, name: str = "port", allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ConfigError(f"{name}: expected a port number, got {value!r}") from None
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{name}: {value} is not a valid port")
    return value


def parse_address(value: str, *, name: str = "address") -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) → (host, port)."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host) or len(host) > 255:
        raise ConfigError(f"{name}: bad host in {value!r}")
    return host, parse_port(port, name=name, allow_zero=False)
