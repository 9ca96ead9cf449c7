"""Keys shared byte-for-byte with the Lua module (docs/keys.md).

Lua's string.lower lowercases ASCII only, so every normalization here is ASCII-only
too: a recipient with non-ASCII bytes gets the same key on both sides.
tests/vectors/normalization.json holds the vectors both test suites check.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Lua's %s class in the C locale: space, \t, \n, \v, \f, \r
_WHITESPACE = " \t\n\v\f\r"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

MAX_RECIPIENT_LENGTH = 512   # bytes of UTF-8, as Lua's # counts them
MAX_DOMAIN_LENGTH = 253      # bytes: no longer domain can name a snapshot file


def ascii_lower(text: str) -> str:
    # str.lower of an ASCII-only text is exactly ASCII lowercasing, and far cheaper than
    # translate's lookup per character
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def recipient_key(address: str) -> str | None:
    """`  <User@Example.NET> ` -> `user@example.net`; `@Bad.Example` stays a domain entry.

    None for something that cannot be a recipient (no `@`, empty, absurdly long)."""
    if not isinstance(address, str):
        return None
    text = address.strip(_WHITESPACE)
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1]
    key = ascii_lower(text)
    if "@" not in key or key.endswith("@") or _utf8_length(key) > MAX_RECIPIENT_LENGTH:
        return None
    return key


def domain_key(domain: str) -> str | None:
    """A sending domain as the key both sides use: ASCII-lowercased, one trailing dot off."""
    if not isinstance(domain, str):
        return None
    key = ascii_lower(domain.strip(_WHITESPACE))
    if key.endswith("."):
        key = key[:-1]
    if _utf8_length(key) > MAX_DOMAIN_LENGTH:
        return None
    return key or None


def _utf8_length(text: str) -> float:
    """The length Lua sees (bytes); infinite for lone surrogates (from JSON \\ud800
    escapes): they have no UTF-8 bytes, so no Lua string could ever match them."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return float("inf")


def domain_of_address(address: str) -> str | None:
    """The sending-domain key of an address (`"News" <news@Example.com>` -> example.com)."""
    if not isinstance(address, str):
        return None
    text = address.strip(_WHITESPACE)
    if text.endswith(">") and "<" in text:
        text = text[text.rindex("<") + 1:-1]
    if "@" not in text:
        return None
    return domain_key(text.rpartition("@")[2])


def is_plain_hostname(domain: str) -> bool:
    """Labels of [a-z0-9-] (1-63 chars, no leading/trailing hyphen), total <= 253."""
    if not domain or len(domain) > 253:
        return False
    return all(_LABEL.match(label) for label in domain.split("."))


def snapshot_filename(domain: str, fmt: str) -> str | None:
    """`example.com.json`, or None for a domain that must never name a file."""
    return f"{domain}.{fmt}" if is_plain_hostname(domain) else None


# what an operator may name (the CLI, the API, the library): stricter than the keys read
# from kumod's logs, which are taken as kumod wrote them
def operator_recipient(text: str) -> str:
    """The key of an address (`local@domain`, optionally in one pair of `<>`) or of a
    recipient-domain entry (`@domain`); ValueError saying why for anything else, such as
    a display name (`Some One <x@y.example>`). The local part is the mailbox's business
    (a quoted local part may hold spaces and quotes), the domain part must be a host name."""
    key = recipient_key(text)
    if key is None:
        raise ValueError(f"{text!r} is not an address (user@domain) or a domain entry (@domain)")
    local, _, domain = key.rpartition("@")
    if "<" in key or ">" in key:
        raise ValueError(f"{text!r}: give the bare address, without a display name or <>")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in local):
        raise ValueError(f"{text!r}: control characters in the address")
    quoted = len(local) >= 2 and local[0] == local[-1] == '"'
    if not quoted and any(ch.isspace() for ch in local):
        raise ValueError(f"{text!r}: spaces in the address (only a quoted local part may hold them)")
    if not _hostname(domain):
        raise ValueError(f"{text!r}: {domain!r} is not a host name")
    return key


def operator_domain(text: str) -> str:
    """The key of a sending domain that is a host name (IDN labels in either form);
    ValueError saying why for anything else (spaces, `*`, an address)."""
    key = domain_key(text)
    if key is None or not _hostname(key):
        raise ValueError(f"{text!r} is not a domain (a host name like example.com)")
    return key


def _hostname(name: str) -> bool:
    """Labels of letters, digits and inner hyphens, non-ASCII letters included (a U-label
    domain is a key kumod can compute from a From header); is_plain_hostname then decides
    which of them may also name a snapshot file."""
    if not name or _utf8_length(name) > MAX_DOMAIN_LENGTH:
        return False
    for label in name.split("."):
        if not label or _utf8_length(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        for ch in label:
            if not (ch.isascii() and (ch.isalnum() or ch == "-")) and \
                    (ch.isascii() or unicodedata.category(ch)[0] not in "LMN"):
                return False
    return True


def recipient_domain_entry(recipient: str) -> str:
    """`user@bad.example` -> `@bad.example`, the entry that suppresses a whole domain."""
    return "@" + recipient.rpartition("@")[2]
