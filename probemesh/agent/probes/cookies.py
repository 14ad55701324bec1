"""The per-probe cookie jar of the http probe, as blackbox gives Go's client one.

Cookies set by a response travel with the redirects that follow, which is how
sites that redirect through a cookie check end up answering. Only the rules a
probe's few hops need (RFC 6265): host-only unless ``Domain`` is set and
matches, ``Path`` prefixes, ``Secure`` only over https, ``Max-Age <= 0``
deletes. Nothing is kept beyond the probe, so expiry dates do not matter.
"""

from __future__ import annotations

import http.cookies
from dataclasses import dataclass

from probemesh.targets import HttpURL


@dataclass
class _Cookie:
    name: str
    value: str
    domain: str
    host_only: bool
    path: str
    secure: bool


class CookieJar:
    """Cookies set during one probe, sent on the requests that follow."""

    def __init__(self) -> None:
        self.cookies: dict[tuple[str, str, str], _Cookie] = {}

    def names(self) -> set[str]:
        return {cookie.name for cookie in self.cookies.values()}

    def store(self, url: HttpURL, set_cookies: list[str]) -> None:
        host = url.host.lower()
        for header in set_cookies:
            parsed = http.cookies.SimpleCookie()
            try:
                parsed.load(header)
            except http.cookies.CookieError:
                continue  # Go's jar drops what it cannot parse
            for name, morsel in parsed.items():
                domain = morsel["domain"].lower().lstrip(".")
                host_only = not domain
                if host_only:
                    domain = host
                elif "." not in domain or not (host == domain or host.endswith("." + domain)):
                    continue
                path = morsel["path"] if morsel["path"].startswith("/") else _default_path(url)
                key = (domain, path, name)
                max_age = morsel["max-age"]
                if max_age and max_age.lstrip("-").isdigit() and int(max_age) <= 0:
                    self.cookies.pop(key, None)
                    continue
                secure = bool(morsel["secure"])
                self.cookies[key] = _Cookie(name, morsel.value, domain, host_only, path, secure)

    def header_value(self, url: HttpURL) -> str:
        """The cookies for url as a Cookie header value, longest path first; "" if none."""
        host = url.host.lower()
        path = url.request_target.split("?", 1)[0]
        matching = [
            cookie
            for cookie in self.cookies.values()
            if (
                host == cookie.domain
                or (not cookie.host_only and host.endswith("." + cookie.domain))
            )
            and _path_match(path, cookie.path)
            and (url.is_tls or not cookie.secure)
        ]
        matching.sort(key=lambda cookie: -len(cookie.path))
        return "; ".join(f"{cookie.name}={cookie.value}" for cookie in matching)


def _default_path(url: HttpURL) -> str:
    path = url.request_target.split("?", 1)[0]
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rindex("/")]


def _path_match(path: str, cookie_path: str) -> bool:
    if path == cookie_path:
        return True
    if path.startswith(cookie_path):
        return cookie_path.endswith("/") or path[len(cookie_path)] == "/"
    return False
