"""KumoMTA bounce classifier rule files, applied the way kumod applies them.

`[rules].classifier_files` names the operator's rule files: the TOML (or JSON) files
`kumo.configure_bounce_classifier { files = {...} }` reads, e.g. the iana.toml kumod ships.
A file is one table `[rules]` mapping a classification label to a list of regular
expressions. kumod (crates/bounce-classify) merges the files in the order given, and
within a file the labels in the order written and each label's patterns in order; the
first pattern (in that order) that matches anywhere in the response's single line,
`"<code> <class>.<subject>.<detail> <content>"` (no enhanced part when there is none),
gives the classification; none matching means Uncategorized.

kumod compiles the patterns with Rust's regex crate. Plain patterns mean the same in
Python's re; a pattern using syntax the two read differently (POSIX classes like
`[[:alpha:]]`, flags in mid-pattern, `\\z`, `\\p{...}`) is refused at start naming the
file and the pattern, rather than classified differently from kumod.
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from functools import lru_cache
from pathlib import Path

UNCATEGORIZED = "Uncategorized"
CACHE_SIZE = 4096      # distinct response lines remembered (kumod keeps 1024 + 1024)


class ClassifierError(ValueError):
    """A rule file that cannot be used (the message names the file and why)."""


# Rust regex syntax Python's re would accept with another meaning, or not at all
_RUST_ONLY = re.compile(r"\[:\^?[a-z]+:\]|\\[pPz]|\\[<>]|\(\?[a-zA-Z]*U")


def _compile(pattern, where: str) -> re.Pattern:
    if not isinstance(pattern, str):
        raise ClassifierError(f"{where}: a rule must be a string, not {type(pattern).__name__}")
    if _RUST_ONLY.search(pattern):
        raise ClassifierError(f"{where}: {pattern!r} uses Rust regex syntax that Python reads "
                              "differently; rewrite it without POSIX classes, \\p, \\z or (?U)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # "possible nested set" and friends
            return re.compile(pattern)
    except (re.error, FutureWarning, DeprecationWarning) as err:
        raise ClassifierError(f"{where}: {pattern!r} is not a usable regular expression: {err}") from None


def _read(path: Path) -> dict:
    if path.suffix not in (".toml", ".json"):
        raise ClassifierError(f"{path}: classifier files must end in .toml or .json (as kumod requires)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ClassifierError(f"{path}: cannot read bounce classifier file: {err.strerror}") from None
    try:
        decoded = json.loads(data) if path.suffix == ".json" else tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ClassifierError(f"{path}: not a bounce classifier file: {err}") from None
    rules = decoded.get("rules") if isinstance(decoded, dict) else None
    if not isinstance(rules, dict) or any(not isinstance(v, list) for v in rules.values()):
        raise ClassifierError(f"{path}: expected a [rules] table of label = [\"regex\", ...]")
    return rules


class BounceClassifier:
    """The merged rules of some classifier files; `classify(code, enhanced, content)`."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        rules: list[tuple[str, re.Pattern]] = []
        for path in self.paths:
            for label, patterns in _read(path).items():
                for n, pattern in enumerate(patterns):
                    rules.append((label, _compile(pattern, f"{path}: [rules] {label}[{n}]")))
        self.rules = tuple(rules)
        self.classify_line = lru_cache(maxsize=CACHE_SIZE)(self._classify_line)

    def _classify_line(self, line: str) -> str:
        for label, pattern in self.rules:
            if pattern.search(line):
                return label
        return UNCATEGORIZED

    def classify(self, code: int | None, enhanced: str | None, content: str | None) -> str:
        """As kumod classifies a response (rfc5321 Response::to_single_line)."""
        line = f"{code if code is not None else 0} "
        if enhanced:
            line += enhanced + " "
        line += single_line(content or "")
        return self.classify_line(line)


def single_line(content: str) -> str:
    """kumod's remove_line_break: CRLF, CR and LF each become one space."""
    return content.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
