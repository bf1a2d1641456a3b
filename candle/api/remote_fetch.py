"""Fetching a client's image URL without letting the client aim the gateway at internal services.

Every connection, the first and each redirect's, resolves the host itself, refuses it unless every
address it resolves to is public (not loopback, private, link-local, IPv6 site-local, multicast,
reserved, unspecified, shared or a cloud metadata endpoint, also when wrapped in an IPv6 address),
and then connects to exactly the address it checked, so a DNS answer that changes between check
and connect (rebinding) cannot redirect it. Redirects are followed by hand, a few at most, each hop
checked the same way; no proxy from the environment is used. One deadline bounds the whole fetch
(connects, TLS, every read, every hop; DNS lookups take the system resolver's own timeouts), and
every fetch of one request when the caller starts them together; the body is capped in bytes.
``allowed`` networks are reachable although not public (an operator's internal image store, or a
test server on loopback); metadata endpoints never are.

Error messages name the host at most: URLs can carry tokens in their paths or queries.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

import httpcore
import httpx

from .errors import APIError, bad_request, too_large

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

REMOTE_FETCH_DEADLINE_S = 10.0
MAX_REDIRECTS = 3
REDIRECTS = (301, 302, 303, 307, 308)
# Cloud metadata services: refused even inside an allowed network.
METADATA_ADDRESSES = frozenset(
    ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
NAT64 = ip_network("64:ff9b::/96")


class ForbiddenAddress(Exception):
    """The host resolves to an address the gateway must not connect to."""


def is_reachable(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> bool:
    """Whether the gateway may connect to ``address``: a public unicast address, or one in ``allowed``."""
    if address in METADATA_ADDRESSES:
        return False
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (_nat64(address) if address in NAT64 else None)
        if embedded is not None:
            return is_reachable(embedded, allowed)
    if any(address in network for network in allowed):
        return True
    # fec0::/10 (site-local) is deprecated, so Python calls it global, but sites still route it internally.
    site_local = isinstance(address, IPv6Address) and address.is_site_local
    return address.is_global and not (
        site_local
        or address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def fetch_remote(
    url: str,
    *,
    param: str,
    max_bytes: int,
    allowed: Sequence[IPNetwork] = (),
    deadline_s: float = REMOTE_FETCH_DEADLINE_S,
    started: float | None = None,
) -> bytes:
    """The body of ``url`` (HTTP 200 after at most ``MAX_REDIRECTS`` redirects), or an ``APIError``;
    by ``deadline_s`` after ``started`` (``time.monotonic()``; now by default)."""
    deadline = (time.monotonic() if started is None else started) + deadline_s
    target = _checked_url(url, param)
    backend = _GuardedBackend(deadline, tuple(allowed))
    with httpcore.ConnectionPool(network_backend=backend, ssl_context=ssl.create_default_context()) as pool:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                location = _get(pool, target, deadline, param, max_bytes)
            except ForbiddenAddress as e:
                raise bad_request(
                    f"Image URLs must point to public addresses; {e} is not one.", param, "forbidden_image_url"
                ) from None
            except httpcore.TimeoutException:
                raise bad_request(
                    f"Fetching the request's images took longer than {deadline_s:g}s.", param, "remote_image_timeout"
                ) from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as e:
                message = f"Fetching the image failed: {type(e).__name__}."
                raise bad_request(message, param, "remote_image_failed") from None
            if isinstance(location, bytes):
                return location
            target = _checked_url(str(target.join(location)), param)
    raise bad_request(f"The image URL redirects more than {MAX_REDIRECTS} times.", param, "remote_image_failed")


def _get(pool: httpcore.ConnectionPool, url: httpx.URL, deadline: float, param: str, max_bytes: int) -> bytes | str:
    """The body of a 200, or the ``Location`` of a redirect."""
    left = _left(deadline)
    timeouts = {"connect": left, "read": left, "write": left, "pool": left}
    with pool.stream("GET", str(url), headers={"Accept": "image/*"}, extensions={"timeout": timeouts}) as response:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        if response.status in REDIRECTS and "location" in headers:
            return headers["location"]
        if response.status != 200:
            raise APIError(400, f"Fetching the image failed with HTTP {response.status}.", param=param)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large(f"The remote image is larger than {max_bytes} bytes.", param=param)
        body = bytearray()
        for chunk in response.iter_stream():
            body += chunk
            if len(body) > max_bytes:
                raise too_large(f"The remote image is larger than {max_bytes} bytes.", param=param)
            _left(deadline)
        return bytes(body)


def _checked_url(url: str, param: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise bad_request("The image URL is malformed.", param, "invalid_image_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise bad_request("Image URLs must be http:// or https:// URLs with a host.", param, "invalid_image_url")
    if parsed.userinfo:
        raise bad_request("Image URLs must not contain credentials.", param, "invalid_image_url")
    return parsed


def _left(deadline: float) -> float:
    """Seconds left before ``deadline``; a timeout once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("deadline passed")
    return left


def _nat64(address: IPv6Address) -> IPv4Address:
    return IPv4Address(int(address) & 0xFFFFFFFF)


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to checked addresses, and never past the fetch's deadline."""

    def __init__(self, deadline: float, allowed: tuple[IPNetwork, ...]) -> None:
        self.deadline = deadline
        self.allowed = allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._resolve(host.strip("[]"), port)
        timeout = min(timeout or _left(self.deadline), _left(self.deadline))
        stream = super().connect_tcp(str(address), port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)

    def _resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to: the first ``host`` resolves to, when every one of them is reachable."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise httpcore.ConnectError("the image host does not resolve") from None
        addresses = [ip_address(str(info[4][0]).split("%")[0]) for info in found]
        if not addresses or not all(is_reachable(a, self.allowed) for a in addresses):
            raise ForbiddenAddress(host)
        return addresses[0]


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the fetch's deadline, however slow the peer."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self.stream = stream
        self.deadline = deadline

    def _timeout(self, timeout: float | None) -> float:
        return min(timeout or _left(self.deadline), _left(self.deadline))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, self._timeout(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, self._timeout(timeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self.stream.start_tls(ssl_context, server_hostname, self._timeout(timeout))
        return _DeadlineStream(stream, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)
