"""Images by URL (form field ``image_url``), only from what the operator allow-lists (``--allow-url``).

An allow-list entry is an http(s) URL prefix: ``https://images.example.com/`` (the whole host) or
``https://cdn.example.com:8443/photos/`` (that folder). A URL matches an entry when its scheme, host and port are
the entry's and its path lies under the entry's path (a path not ending in ``/`` is a folder too: ``/photos``
allows ``/photos/a.jpg``, not ``/photos-x/``). URLs with credentials (``user@host``), dot segments (``/../``) or
another scheme are refused, and so is every redirect that leaves the allow-list. By default the list is empty:
the server fetches nothing (403), so it cannot be made to reach hosts its operator did not name.
"""

from __future__ import annotations

import posixpath
import urllib.error
import urllib.parse
import urllib.request

from ..errors import InputError
from ..image_io import ImageTooLargeError

HOW_TO_ALLOW = "start the server with --allow-url PREFIX (e.g. --allow-url https://images.example.com/)"


class URLNotAllowedError(InputError):
    """An image URL outside the server's allow-list (HTTP 403)."""


def _parts(url: str, what: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, or an InputError naming ``what``."""
    try:
        u = urllib.parse.urlsplit(url.strip())
        port = u.port
    except ValueError as e:
        raise InputError(f"{what} {url!r} is not a valid URL ({e}).") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InputError(f"{what} {url!r} must be an http:// or https:// URL with a host.")
    if u.username is not None or u.password is not None:
        raise InputError(f"{what} {url!r} holds credentials (user@host): they are not accepted.")
    path = urllib.parse.unquote(u.path) or "/"
    if any(seg in (".", "..") for seg in path.split("/")):
        raise InputError(f"{what} {url!r} has '.' or '..' path segments: give the plain path.")
    return u.scheme, u.hostname.lower(), port or (443 if u.scheme == "https" else 80), posixpath.join("/", path)


def parse_allow_list(entries) -> list[tuple[str, str, int, str]]:
    """The allow-list's entries, checked (ServeConfig does it when the server starts)."""
    out = []
    for e in entries:
        if not isinstance(e, str):
            raise InputError(f"--allow-url entries are URL prefixes (text), got {e!r}.")
        scheme, host, port, path = _parts(e, "--allow-url")
        if urllib.parse.urlsplit(e).query or urllib.parse.urlsplit(e).fragment:
            raise InputError(f"--allow-url {e!r}: give a URL prefix without ?query or #fragment.")
        out.append((scheme, host, port, path))
    return out


def url_allowed(url: str, allow: tuple[str, ...]) -> bool:
    """Whether ``url`` lies under an entry of ``allow`` (see the module's doc); InputError when it is not a
    fetchable URL at all."""
    scheme, host, port, path = _parts(url, "image_url")
    for s, h, p, prefix in parse_allow_list(allow):
        if (s, h, p) != (scheme, host, port):
            continue
        folder = prefix if prefix.endswith("/") else prefix + "/"
        if path == prefix or path.startswith(folder):
            return True
    return False


def check_url(url: str, allow: tuple[str, ...]) -> None:
    if not allow:
        raise URLNotAllowedError(f"this server fetches no image URLs (refused {url!r}): send the image as the "
                                 f"multipart field 'image', or {HOW_TO_ALLOW}.")
    if not url_allowed(url, allow):
        raise URLNotAllowedError(f"image_url {url!r} is not under this server's allowed URL prefixes "
                                 f"({', '.join(allow)}): send the image as the multipart field 'image', or add its "
                                 f"prefix with --allow-url.")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only into the allow-list."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        self.allow = allow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            allowed = url_allowed(newurl, self.allow)
        except InputError:
            allowed = False
        if not allowed:
            raise URLNotAllowedError(f"image_url {req.full_url!r} redirects to {newurl!r}, which is not under this "
                                     f"server's allowed URL prefixes ({', '.join(self.allow)}); give the final URL, "
                                     f"or allow its prefix with --allow-url.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_image(url: str, allow: tuple[str, ...], max_bytes: int, timeout: float = 30.0) -> bytes:
    """The bytes at ``url`` when the allow-list permits it (else URLNotAllowedError), at most ``max_bytes``
    (else ImageTooLargeError, 413)."""
    check_url(url, allow)
    opener = urllib.request.build_opener(_Redirects(allow))
    request = urllib.request.Request(url.strip(), headers={"User-Agent": "swiftsam-serve"})
    too_large = (f"the image at {url!r} is larger than this server's limit of {max_bytes / 2**20:.3g} MB "
                 f"(--max-upload-mb).")
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ImageTooLargeError(too_large)
            data = response.read(max_bytes + 1)
    except InputError:  # ours: a refused redirect, too large
        raise
    except urllib.error.HTTPError as e:
        raise InputError(f"fetching image_url {url!r} failed: HTTP {e.code} {e.reason}.") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"could not fetch image_url {url!r} ({reason}); check the URL, or send the image as the "
                         f"multipart field 'image'.") from None
    if len(data) > max_bytes:
        raise ImageTooLargeError(too_large)
    return data
