"""Outbound webhooks: Standard Webhooks signatures, events, and which addresses may be reached.

The sender (``workers.webhook_sender``) checks the target's address when it connects (not only
when the URL is accepted), so a DNS answer that changes to a private address is still refused.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from schemas.errors import ErrorCode, LongdocError

# Never reachable unless allowed: private, loopback, link-local (cloud metadata), CGNAT, ...
BLOCKED_NETWORKS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "fc00::/7", "fe80::/10",
    "ff00::/8",
)]


class WebhookTargetRefused(LongdocError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.WEBHOOK_URL_NOT_ALLOWED, message)


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: list[str]) -> bool:
    for cidr in allowed:
        if ip in ipaddress.ip_network(cidr, strict=False):
            return True
    return not any(ip in net for net in BLOCKED_NETWORKS if net.version == ip.version)


def resolve_checked(host: str, port: int, allowed: list[str]) -> str:
    """Resolves ``host`` and returns an address that may be contacted, or raises."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookTargetRefused(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not _allowed(ip, allowed):
            raise WebhookTargetRefused(
                f"{host} resolves to {ip}, a private or reserved address; allow it with "
                "LONGDOC_WEBHOOK_ALLOWED_NETWORKS")
    return str(infos[0][4][0])


def check_target(url: str, allowed: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetRefused("webhook_url must be an absolute http(s) URL")
    resolve_checked(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                    allowed)


def signed_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, timestamp, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": "longdoc-webhooks/1"}


def event_body(event: str, job_view: dict[str, Any], timestamp: datetime) -> str:
    return json.dumps({"type": event, "timestamp": timestamp.isoformat(), "data": job_view})
