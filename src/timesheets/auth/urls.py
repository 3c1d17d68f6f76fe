"""Which URLs may be fetched for keys and metadata."""

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_fetchable(url: str) -> bool:
    """https:// anywhere, http:// only on loopback (127.0.0.0/8, ::1, localhost)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError when out of range
    except ValueError:  # e.g. 'https://[::1/keys': not a URL at all
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))
