"""Passwords out of every line the study prints or stores: :func:`mask_url` and :func:`mask_text`.

A storage or tracking URL may carry a password, in its user part (``postgresql://user:PASSWORD@host/db``) or
in its query string (``...?password=PASSWORD``). Whatever the study writes to MLflow (params, configs,
summaries) or prints takes these URLs through :func:`mask_url`; free text that may quote a URL or its
password (a driver's error message) goes through :func:`mask_text`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://userinfo@host...: userinfo runs up to the last '@' before the query (or the end of the word), so a
# password holding an unescaped '@' or '/' is masked whole (at worst, more than the password is masked)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^?#\s]*)@")
# password-like keys in query strings (?password=...&) and in libpq's "key=value" connection strings
_SECRET_KEYS = r"password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|sslpassword"
_KEY_VALUE = re.compile(rf"(?P<key>(?:(?<=[?&;\s])|^)(?:{_SECRET_KEYS})=)(?P<value>[^&;#\s]*)", re.IGNORECASE)


def _mask_userinfo(m: re.Match) -> str:
    user, sep, _ = m["userinfo"].partition(":")
    return f"{m['head']}{user}:{MASK}@" if sep else m[0]


def mask_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: the user part's password and the values of
    password-like query keys (``password``, ``pwd``, ``token``, ...). Anything else is kept as it is, so the
    result still says which server, port, database and user were used. Non-strings are returned as text."""
    text = str(url)
    text = _USERINFO.sub(_mask_userinfo, text)
    return _KEY_VALUE.sub(lambda m: m["key"] + (MASK if m["value"] else ""), text)


def passwords(url: str) -> list[str]:
    """The secrets that ``url`` carries, as typed and percent-decoded (empty when it carries none)."""
    found = []
    for m in _USERINFO.finditer(str(url)):
        user, sep, password = m["userinfo"].partition(":")
        if sep and password:
            found.append(password)
    found += [m["value"] for m in _KEY_VALUE.finditer(str(url)) if m["value"]]
    out = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return out


def mask_text(text: str, *urls: str) -> str:
    """``text`` with the URLs in it masked (:func:`mask_url`) and every password of ``urls`` (as typed or
    percent-decoded) replaced by ``***`` wherever it appears, e.g. in a database driver's error message."""
    out = mask_url(str(text))
    secrets = sorted({s for u in urls for s in passwords(u)}, key=len, reverse=True)
    for secret in secrets:
        if len(secret) >= 3:  # a 1-2 character password would mask unrelated text; the URL forms are masked anyway
            out = out.replace(secret, MASK)
    return out
