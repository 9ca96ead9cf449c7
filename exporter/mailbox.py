"""The sending domain of a From header, as kumod's `msg:from_header().domain` gives it.

kumod parses the From header as an RFC 5322 address-list (crates/mailparsing, obsolete
forms included) and `.domain` answers only for a list of exactly ONE mailbox: several
mailboxes, a group, or a header it cannot parse raise instead, and the Lua module then
falls back to the envelope sender. `mailbox_domain` returns that one mailbox's domain, or
None in every case where `.domain` would raise.

What kumod LOGS is the header with RFC 2047 encoded-words decoded, so the logged text of
`=?UTF-8?Q?Caf=C3=A9_=40_Paris?= <news@cafe.example>` is `Café @ Paris <news@cafe.example>`,
which is no longer a valid address-list. When the text does not parse, the one reading
left is a decoded display name followed by `<addr-spec>`: that is the mailbox kumod saw,
provided the display name holds no `<` or `>` (otherwise which `<...>` is the address
cannot be told, and no domain is guessed).

The parser is iterative (no recursion, linear time): hostile input cannot exhaust the
stack. Comments nested deeper than MAX_COMMENT_NESTING raise HostileHeader, so that such
a record is skipped as malformed rather than keyed by some guess.
"""

from __future__ import annotations

import re

MAX_COMMENT_NESTING = 64     # real headers nest comments two or three deep at most
MAX_HEADER_LENGTH = 65536    # characters: more is no From header kumod ever logged


class HostileHeader(ValueError):
    """A header no mail program writes (absurd comment nesting or size)."""


class _Unparsable(Exception):
    pass


_WS = " \t\r\n"
_SPECIALS = frozenset('()<>[]:;@\\,."') | frozenset(_WS)


def _is_text(ch: str) -> bool:
    """atext and UTF-8 (RFC 6532); no controls, no lone surrogates (they have no bytes)."""
    o = ord(ch)
    return 0x20 < o < 0x7F or (o >= 0x80 and not 0xD800 <= o <= 0xDFFF)


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens; kind is 'atom', 'word' (quoted-string), 'literal', or the
    special character itself. Comments and whitespace (CFWS) are dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                    if depth > MAX_COMMENT_NESTING:
                        raise HostileHeader(f"comments nested more than {MAX_COMMENT_NESTING} deep")
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                elif not _is_text(c) and c not in _WS:
                    raise _Unparsable
                i += 1
            else:
                raise _Unparsable          # unclosed comment
        elif c == '"':
            j, value = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 1
                    if j >= n:
                        break
                elif not _is_text(text[j]) and text[j] not in _WS:
                    raise _Unparsable
                value.append(text[j])
                j += 1
            if j >= n:
                raise _Unparsable          # unclosed quoted-string
            out.append(("word", "".join(value)))
            i = j + 1
        elif c == "[":
            j = i + 1
            while j < n and text[j] not in "[]":
                j += 2 if text[j] == "\\" else 1
            if j >= n or text[j] != "]":
                raise _Unparsable
            out.append(("literal", text[i:j + 1]))
            i = j + 1
        elif c in "<>:;@,.":
            out.append((c, c))
            i += 1
        elif c in ")]\\" or not _is_text(c):
            raise _Unparsable
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and _is_text(text[j]):
                j += 1
            out.append(("atom", text[i:j]))
            i = j
    return out


class _Parser:
    """RFC 5322 address-list over tokens, obsolete forms as kumod accepts them (empty list
    members, phrases with dots, local parts of dotted words, source routes)."""

    def __init__(self, tokens):
        self.toks = tokens
        self.pos = 0

    def peek(self, ahead: int = 0) -> str | None:
        p = self.pos + ahead
        return self.toks[p][0] if p < len(self.toks) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise _Unparsable
        value = self.toks[self.pos][1]
        self.pos += 1
        return value

    def address_list(self) -> list[str | None]:
        """One entry per address: a mailbox's domain, or None for a group."""
        entries: list[str | None] = []
        while True:
            while self.peek() == ",":
                self.pos += 1
            if self.peek() is None:
                break
            entries.append(self.address())
            if self.peek() is None:
                break
            self.take(",")
        if not entries:
            raise _Unparsable
        return entries

    def phrase_length(self) -> int:
        """Tokens of a phrase starting here (a word first, then words and dots)."""
        n = 0
        while self.peek(n) in ("atom", "word") or (n and self.peek(n) == "."):
            n += 1
        return n

    def address(self) -> str | None:
        n = self.phrase_length()
        after = self.peek(n)
        if after == ":" and n:                       # group: phrase ":" [mailboxes] ";"
            self.pos += n + 1
            while self.peek() != ";":
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.mailbox()
                if self.peek() != ";":
                    self.take(",")
            self.pos += 1
            return None
        return self.mailbox()

    def mailbox(self) -> str:
        n = self.phrase_length()
        if self.peek(n) == "<":                      # [display-name] angle-addr
            self.pos += n + 1
            if self.peek() == "@":                   # obs-route: @a,@b:
                while self.peek() in ("@", ","):
                    if self.take(self.peek()) == "@":
                        self.domain()
                self.take(":")
            domain = self.addr_spec()
            self.take(">")
            return domain
        return self.addr_spec()

    def addr_spec(self) -> str:
        self.take_word()
        while self.peek() == ".":
            self.pos += 1
            self.take_word()
        self.take("@")
        return self.domain()

    def take_word(self) -> None:
        if self.peek() not in ("atom", "word"):
            raise _Unparsable
        self.pos += 1

    def domain(self) -> str:
        if self.peek() == "literal":
            return self.take("literal")
        labels = [self.take("atom")]
        while self.peek() == "." and self.peek(1) == "atom":
            self.pos += 1
            labels.append(self.take("atom"))
        if self.peek() == ".":
            raise _Unparsable                        # a trailing dot: `user@example.`
        return ".".join(labels)


def _parse(text: str) -> list[str | None]:
    parser = _Parser(_tokens(text))
    return parser.address_list()


# `Name <user@domain>` or a bare `user@domain`: nearly every From header, read without
# the tokenizer (the tests check that both give the same answer)
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-\u0080-\ud7ff\ue000-\U0010ffff"
_DOT_ATOM = f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*"
_SIMPLE = re.compile(
    f"[ \\t]*(?:(?:[{_ATEXT}][{_ATEXT}. \\t]*)?<{_DOT_ATOM}@({_DOT_ATOM})>|{_DOT_ATOM}@({_DOT_ATOM}))[ \\t]*")


def mailbox_domain(text: str) -> str | None:
    """The domain of the single mailbox of a From header value as kumod logs it, or None
    (see the module's doc). HostileHeader for input no mail program writes."""
    if len(text) > MAX_HEADER_LENGTH:
        raise HostileHeader(f"header longer than {MAX_HEADER_LENGTH} characters")
    simple = _SIMPLE.fullmatch(text)
    if simple:
        return simple.group(1) or simple.group(2)
    try:
        entries = _parse(text)
    except _Unparsable:
        return _decoded_display_name_domain(text)
    return entries[0] if len(entries) == 1 else None


def _decoded_display_name_domain(text: str) -> str | None:
    """`<anything without angle brackets> <addr-spec>` (CFWS around it allowed)."""
    start = text.rfind("<")
    if start < 0 or ">" in text[:start]:
        return None
    try:
        parser = _Parser(_tokens(text[start:]))
        parser.take("<")
        domain = parser.addr_spec()
        parser.take(">")
    except _Unparsable:
        return None
    return domain if parser.peek() is None else None
