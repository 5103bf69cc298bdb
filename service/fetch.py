"""Image URLs as input (`MAE_ALLOW_URLS`, off by default), fetched without opening a door
into the server's own network.

A server that fetches what a client names can be made to read what only it can reach:
cloud metadata (169.254.169.254), admin ports on localhost, the private network behind it
(server-side request forgery). So, for every hop, redirects included:
1. the scheme is http or https, the URL carries no user:password;
2. the host name is resolved once, here, and every address it resolves to must be
   public (`ipaddress`'s `is_global`: not private, loopback, link-local, shared,
   reserved, multicast or unspecified), unless it lies in a network the operator allowed
   (`MAE_URL_ALLOW_NETWORKS`, e.g. an internal object store);
3. the connection goes to the address just checked, not to a second lookup (which a
   rebinding DNS server could answer differently); TLS still checks the host's name;
4. the body is read up to `MAE_MAX_IMAGE_BYTES` and the whole fetch, redirects included,
   must end within `MAE_URL_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

from .engine_errors import TooLarge, UrlFetchFailed, UrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = (301, 302, 303, 307, 308)


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class UrlPolicy:
    max_bytes: int
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_networks: tuple[IPNetwork, ...] = field(default=())

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be fetched from, or None when it may."""
        if any(address in net for net in self.allow_networks):
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.refusal(address.ipv4_mapped)  # ::ffff:10.0.0.1 is 10.0.0.1
        if address.is_global and not address.is_multicast:
            return None
        kind = next(
            (
                name
                for name in ("unspecified", "loopback", "link_local", "multicast", "private")
                if getattr(address, f"is_{name}")
            ),
            "reserved",
        )
        return f"{address} is a {kind.replace('_', '-')} address"


async def fetch_image(url: str, policy: UrlPolicy, what: str = "image") -> bytes:
    """The bytes at `url`, fetched under `policy`; UrlRefused, UrlFetchFailed or TooLarge
    (each naming `what` and the URL) otherwise."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(url, policy, what)
    except TimeoutError:
        raise UrlFetchFailed(
            f"{what}: {url} did not answer within {policy.timeout_s:g} s (MAE_URL_TIMEOUT_S)"
        ) from None


async def _fetch(url: str, policy: UrlPolicy, what: str) -> bytes:
    timeout = httpx.Timeout(policy.timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as c:
        for _hop in range(policy.max_redirects + 1):
            parts, address = await _checked(url, policy, what)
            host = parts.hostname or ""
            port = parts.port
            netloc = f"[{address}]" if address.version == 6 else str(address)
            if port is not None:
                netloc += f":{port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
            try:
                request = c.build_request("GET", pinned, headers=headers, extensions=extensions)
                response = await c.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"{what}: cannot fetch {url}: {exc}") from None
            try:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise UrlFetchFailed(f"{what}: {url} answered {response.status_code}")
                return await _read_capped(response, policy.max_bytes, url, what)
            finally:
                await response.aclose()
    raise UrlFetchFailed(f"{what}: more than {policy.max_redirects} redirects from {url}")


async def _checked(url: str, policy: UrlPolicy, what: str) -> tuple[SplitResult, IPAddress]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"{what}: only http and https URLs are fetched, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused(f"{what}: URLs with a user name or password are not fetched")
    host = parts.hostname
    if not host:
        raise UrlRefused(f"{what}: {url} names no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused(f"{what}: {url} has an invalid port") from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlFetchFailed(f"{what}: cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))
    for address in addresses:  # all of them: a name may mix a public and a private address
        reason = policy.refusal(address)
        if reason is not None:
            raise UrlRefused(f"{what}: {url} is not fetched: {host} resolves to {reason}")
    return parts, addresses[0]


async def _read_capped(response: httpx.Response, limit: int, url: str, what: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{what}: {url} holds {declared} bytes, over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what}: {url} is larger than the {limit}-byte limit per image")
        chunks.append(chunk)
    return b"".join(chunks)
