"""Secret detection: rules for known credential formats plus an entropy check.

Values never leave this module unmasked: a finding holds the first four characters and
asterisks.

How a file is scanned (the order matters for speed; most files stop at step 1, 2 or 3):

1. a path allow rule matches (system docs, test suites and docs inside installed language
   packages, package metadata): skipped, judged from the path before the layer scan reads
   the file (``wants``);
2. a NUL in the first 8 KiB: a binary file, skipped (``is_text``);
3. the content is searched, ASCII case ignored, for the keywords of every rule at once
   (``KeywordIndex``; the layer scan hands text files over about a MiB at a time,
   ``scan_texts``); only the rules with a keyword present (and, for a rule with
   ``literals``, one of those in exact case) run their regex. A keyword is a string that
   every match of its rule contains (a superset condition, so the prefilter never loses
   a hit); a rule without keywords runs on every text file; an ``anchored`` rule is
   tried only where its keywords start, a ``from_line`` rule only at the line start
   before each keyword;
4. a match is dropped when its value has too little entropy (``min_entropy``) or when an
   allow rule's ``regex`` matches the value (placeholders such as ``user:pass@``).

Rules match the file's bytes (``re`` on bytes: ``\\w``, ``\\b``, ``\\s`` and ``(?i)`` are
ASCII), so nothing is decoded unless a rule fires. Users add rules, allow rules and
disable built-in ones with a YAML file (``controlplane.scanner.engine.secretconfig``).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moray.controlplane.scanner.engine.config import mask
from moray.controlplane.scanner.engine.model import SecretFinding, Severity

if TYPE_CHECKING:
    from ahocorasick_rs import BytesAhoCorasick

log = logging.getLogger(__name__)

BINARY_PROBE = 8192  # a NUL in this many leading bytes makes a file binary
DIR_CACHE = 1 << 16  # directories whose allow-rule verdict is remembered


@dataclass(frozen=True, slots=True)
class AllowRule:
    """Drops findings: in files whose path matches ``path``, or whose value matches ``regex``."""

    id: str
    description: str = ""
    path: re.Pattern[str] | None = None  # searched in the path inside the image (no leading /)
    regex: re.Pattern[str] | None = None  # searched in the secret's value
    # every match of ``path`` ends with "/" and needs nothing after it (no lookahead, no
    # $): it is then searched in the file's directory (with its trailing slash) once per
    # directory, with the same result as in the whole path
    directory: bool = False
    # strings one of which the path holds whenever ``path`` matches: the regex runs only
    # on paths holding one (a plain substring test is a fraction of a search)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecretRule:
    id: str
    title: str
    severity: Severity
    pattern: re.Pattern[bytes]
    group: int | str = 0  # which group holds the secret value
    min_entropy: float = 0.0
    # lowercase ASCII strings, one of which every match contains (ASCII case ignored);
    # the rule runs only on content holding one; () runs it on every text file
    keywords: tuple[str, ...] = ()
    path: re.Pattern[str] | None = None  # only files whose path matches
    allow: tuple[AllowRule, ...] = ()  # allow rules of this rule alone
    # every match starts where one of the keywords starts: the regex is tried only there
    # (re.match at each keyword) instead of searching the whole file
    anchored: bool = False
    # every match starts at a line start and reaches one of its keywords through
    # whitespace and at most one run of non-space bytes ending where the keyword starts
    # (.npmrc's "//host/:_authToken="): the regex is tried only at the first line start
    # of the whitespace before each keyword's run (its matches start nowhere else)
    from_line: bool = False
    # byte strings, exact case, one of which every match contains: checked (in the
    # original bytes) before the regex runs, for a case-sensitive rule whose keyword is
    # common in lowercase text (Twilio's "sk": in 1 text file of 9; "SK": far fewer)
    literals: tuple[bytes, ...] = ()


def _r(p: str) -> re.Pattern[bytes]:
    return re.compile(p.encode())


def _word(literal: str) -> str:
    """``(`` + ``literal`` at the start of a word: what ``\\b(literal`` means, written so
    that the pattern starts with the literal. ``re`` then finds candidates with a fast
    substring search instead of trying every position (the Twilio rule: 0.42 s -> 0.01 s
    on 42 MB). The literal must start with a word character.
    """
    lit = re.escape(literal)
    return f"({lit}(?<![A-Za-z0-9_]{lit})"


RULES: tuple[SecretRule, ...] = (
    SecretRule("aws-access-key-id", "AWS access key ID", Severity.CRITICAL,
               # \b before the A, written after it (a lookbehind over the 4 letters) so
               # that the pattern starts with a literal: re skips to each "A"
               _r(r"(A(?:KIA|SIA|BIA|CCA)(?<![A-Za-z0-9_]....)[0-9A-Z]{16})\b"), 1,
               keywords=("akia", "asia", "abia", "acca")),
    SecretRule("aws-secret-access-key", "AWS secret access key", Severity.CRITICAL,
               _r(r"(?i)aws_?secret_?access_?key\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})\b"), 1,
               3.5, keywords=("aws_secret", "awssecret")),
    # the header alone is not a key (libraries hold it as a constant): a body must follow,
    # after optional armor headers (Proc-Type:, Version:), real or JSON-escaped newlines
    SecretRule("private-key", "private key", Severity.HIGH,
               _r(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"
                  r"(?: BLOCK)?-----(?:\s|\\[nr])*(?:[A-Za-z-]+: [^\n]*\n\s*)*"
                  r"([A-Za-z0-9+/=]{4,})"), 1,
               keywords=("private key",)),
    SecretRule("github-token", "GitHub token", Severity.CRITICAL,
               _r(r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b"),
               1, keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    SecretRule("gitlab-token", "GitLab personal access token", Severity.CRITICAL,
               _r(_word("glpat-") + r"[A-Za-z0-9_-]{20})\b"), 1, keywords=("glpat-",)),
    SecretRule("slack-token", "Slack token", Severity.HIGH,
               _r(r"\b(xox[baprs]-[0-9A-Za-z-]{10,72})\b"), 1,
               keywords=("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-")),
    SecretRule("stripe-key", "Stripe secret key", Severity.CRITICAL,
               _r(r"\b((?:sk|rk)_live_[0-9a-zA-Z]{24,99})\b"), 1, keywords=("_live_",)),
    SecretRule("google-api-key", "Google API key", Severity.HIGH,
               _r(_word("AIza") + r"[0-9A-Za-z_-]{35})\b"), 1, keywords=("aiza",)),
    SecretRule("npm-token", "npm access token", Severity.HIGH,
               _r(_word("npm_") + r"[A-Za-z0-9]{36})\b"), 1, keywords=("npm_",)),
    SecretRule("database-url", "database URL with password", Severity.HIGH,
               _r(r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|amqps?|mssql)"
                  r"://[^\s:/@\"']+:([^\s@/\"']{3,})@[^\s\"']+"), 1,
               keywords=("postgres://", "postgresql://", "mysql://", "mariadb://",
                         "mongodb://", "mongodb+srv://", "redis://", "amqp://", "amqps://",
                         "mssql://")),
    SecretRule("gcp-service-account", "Google Cloud service account key", Severity.CRITICAL,
               _r(r'"private_key_id"\s*:\s*"([0-9a-f]{40})"'), 1,
               keywords=('"private_key_id"',)),
    SecretRule("azure-storage-key", "Azure storage account key", Severity.CRITICAL,
               _r(r"AccountKey=([A-Za-z0-9+/]{86}==)"), 1, keywords=("accountkey=",)),
    SecretRule("sendgrid-key", "SendGrid API key", Severity.HIGH,
               _r(_word("SG.") + r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})\b"), 1, keywords=("sg.",)),
    SecretRule("twilio-key", "Twilio API key", Severity.HIGH,
               _r(_word("SK") + r"[0-9a-fA-F]{32})\b"), 1, 3.0, keywords=("sk",),
               literals=(b"SK",)),
    SecretRule("huggingface-token", "Hugging Face access token", Severity.HIGH,
               _r(_word("hf_") + r"[A-Za-z]{34})\b"), 1, keywords=("hf_",)),
    SecretRule("openai-key", "OpenAI API key", Severity.HIGH,
               _r(r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,})\b"), 1,
               keywords=("t3blbkfj",)),
    SecretRule("pypi-token", "PyPI upload token", Severity.HIGH,
               _r(_word("pypi-AgEIcHlwaS5vcmc") + r"[A-Za-z0-9_-]{50,})"), 1,
               keywords=("pypi-ageichlwas5vcmc",)),
    SecretRule("npmrc-auth", "npm registry credential in .npmrc", Severity.HIGH,
               _r(r"(?m)^\s*(?://[^\s]+:)?_(?:authToken|auth|password)\s*=\s*(\S{8,})"), 1,
               keywords=("_auth", "_password"), from_line=True),
    SecretRule("docker-config-auth", "registry credential in docker config.json", Severity.HIGH,
               _r(r'"auth"\s*:\s*"([A-Za-z0-9+/=]{12,})"'), 1, keywords=('"auth"',)),
    SecretRule("jwt", "JSON Web Token", Severity.MEDIUM,
               _r(_word("eyJ") + r"[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"
                  r"\.[A-Za-z0-9_-]{16,})"), 1, keywords=("eyj",)),
    SecretRule("generic-secret", "high-entropy secret assignment", Severity.MEDIUM,
               _r(r"(?i)\b(?:password|passwd|secret|api_?key|access_?token|auth_?token)"
                  r"[\"']?\s*[:=]\s*[\"']([^\s\"']{12,})[\"']"), 1, 3.5,
               keywords=("passw", "secret", "apikey", "api_key", "accesstoken", "access_token",
                         "authtoken", "auth_token"), anchored=True),
)

# Installed language packages: their test suites, docs and metadata quote example
# credentials (SQLAlchemy's scott:tiger, npm's docs on .npmrc tokens). Only these trees:
# an application's own tests/ or docs/ elsewhere are scanned.
_PKG_TREE = r"(?:^|/)(?:site-packages|dist-packages|node_modules)/(?:.*/)?"

ALLOW_RULES: tuple[AllowRule, ...] = (
    AllowRule("system-docs", "documentation, headers, locales and time zones of the OS",
              path=re.compile(r"^usr/(?:include|share/(?:doc|man|locale|zoneinfo|i18n))/"),
              directory=True),
    AllowRule("non-text-files", "files of kinds that do not hold configuration",
              path=re.compile(r"\.(?:md5sums|pyc|so|mo|gz|png|jpg|svg)$"),
              needs=(".md5sums", ".pyc", ".so", ".mo", ".gz", ".png", ".jpg", ".svg")),
    AllowRule("package-metadata", "package metadata and bundled READMEs and changelogs "
              "(PyJWT's PKG-INFO quotes a JWT)",
              path=re.compile(r"(?:-info/|node_modules/)(?:.*/)?(?:METADATA|PKG-INFO|README"
                              r"|README\.md|README\.rst|CHANGELOG\.md|HISTORY\.md|CHANGES\.rst)$"),
              needs=("METADATA", "PKG-INFO", "README", "CHANGELOG.md", "HISTORY.md",
                     "CHANGES.rst")),
    AllowRule("package-tests", "test suites and fixtures inside installed language packages",
              path=re.compile(_PKG_TREE + r"(?:tests?|testing|__tests__|spec|fixtures|testdata)/"),
              directory=True),
    AllowRule("package-docs", "documentation and examples inside installed language packages",
              path=re.compile(_PKG_TREE + r"(?:(?:docs?|man|examples?)/|[^/]+\.(?:md|rst)$)"),
              needs=("doc/", "docs/", "man/", "example/", "examples/", ".md", ".rst")),
    AllowRule("rfc-examples", "example tokens of the OAuth 2.0 RFC 6749 (access, refresh "
              "token, code, client secret), quoted by oauthlib and other OAuth libraries",
              regex=re.compile(r"2YotnFZFEjr1zCsicMWpAA|tGzv3JOkF0XG5Qx2TlKWIA"
                               r"|SplxlOBeZQQYbYS6WxSbIA|7Fjfp0ZBr1KtDRbnfVdmIw")),
    AllowRule("placeholders", "well-known example values (user:pass@, scott:tiger, XXXX, "
              "${VAR}, <password>)",
              regex=re.compile(r"(?i)^(?:pass(?:word|wd)?|pwd|tiger|changeme|x{3,}|\*{3,}"
                               r"|<[^>]*>|\{[^}]*\}|\$\{[^}]*\}|\$[a-z_]\w*|%s|%\([^)]*\)s)$")),
)


def shannon_entropy(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def check_keyword(keyword: str) -> str:
    """The keyword as the index uses it (lowercase); ValueError if it cannot be used."""
    if not keyword:
        raise ValueError("empty keyword (it would match every file)")
    if not keyword.isascii():
        raise ValueError(f"keyword {keyword!r} is not ASCII (only ASCII case is ignored)")
    if "\x00" in keyword:
        raise ValueError(f"keyword {keyword!r} holds a NUL (files are joined by NULs)")
    return keyword.lower()


SHORT_KEYWORD = 4  # keywords shorter than this get a searcher each (see KeywordIndex)


def hidden_by(pattern: bytes, keywords: Sequence[bytes]) -> list[tuple[int, int]]:
    """What an occurrence of ``pattern`` can hide from a non-overlapping search: (index
    of a keyword not inside ``pattern``, offset in ``pattern`` where it would start) for
    every proper suffix of ``pattern`` that is a proper prefix of that keyword."""
    return [(k, len(pattern) - n) for k, kw in enumerate(keywords) if kw not in pattern
            for n in range(1, min(len(pattern), len(kw))) if pattern[-n:] == kw[:n]]


def occurrences_near(pattern: bytes, keywords: Sequence[bytes],
                     wanted: Sequence[int]) -> list[tuple[int, int, bool]]:
    """Where a reported ``pattern`` tells the ``wanted`` keywords occur: (index of the
    keyword, offset from the pattern's start, certain) for each offset where it lies
    inside the pattern (certain) and for each proper suffix of the pattern that is a
    proper prefix of it (to be checked: it may start there and go on past the pattern)."""
    out = []
    for k in wanted:
        kw = keywords[k]
        at = pattern.find(kw)
        while at >= 0:
            out.append((k, at, True))
            at = pattern.find(kw, at + 1)
        out.extend((k, len(pattern) - n, False)
                   for n in range(1, min(len(pattern), len(kw))) if pattern[-n:] == kw[:n])
    return out


class KeywordIndex:
    """Which rules can match some content: every rule's keywords looked up at once.

    With ahocorasick-rs (Aho-Corasick and SIMD substring search in Rust) the lowercased
    content is searched by a few automatons: one leftmost-longest automaton for the
    keywords of at least SHORT_KEYWORD bytes (see ``present`` for why it misses none),
    and one single-pattern searcher per shorter keyword (``sk``, ``eyj``: a short
    keyword among many disables the automaton's prefilter and makes it visit every
    byte; alone it is a vectorised substring search). On the 146 MB of text of the
    501 MB ``host`` image: ~60 ms of CPU, against ~230 ms for one overlapping automaton
    over all keywords. Without ahocorasick-rs each keyword is a ``bytes.find`` pass
    (~40x slower). Files are looked up many at a time (``present``): joined by NULs,
    which no keyword holds, so one call covers them all.

    Where the keywords of ``anchored`` rules start comes from the same search
    (``search``): each occurrence is either reported or overlaps a reported match
    (``occurrences_near``); without ahocorasick-rs, with ``bytes.find`` afterwards.
    """

    def __init__(self, rules: Sequence[SecretRule], use_automaton: bool = True) -> None:
        ids: dict[bytes, int] = {}
        by_keyword: list[list[int]] = []
        self.always: tuple[int, ...] = tuple(i for i, r in enumerate(rules) if not r.keywords)
        for i, rule in enumerate(rules):
            for kw in rule.keywords:
                key = check_keyword(kw).encode()
                if key not in ids:
                    ids[key] = len(by_keyword)
                    by_keyword.append([])
                by_keyword[ids[key]].append(i)
        self.keywords = list(ids)
        self.rules_of = [tuple(r) for r in by_keyword]
        self.anchored_rules = {i for i, r in enumerate(rules)
                               if (r.anchored or r.from_line) and r.keywords}
        self.line_rules = {i for i, r in enumerate(rules) if r.from_line and r.keywords}
        self.anchored_keywords = {k for k, of in enumerate(self.rules_of)
                                  if self.anchored_rules.intersection(of)}
        # (automaton, keywords each pattern implies, (keyword, offset) each can hide,
        # (anchored keyword, offset, certain) each tells where they occur)
        self._searchers: list[tuple[BytesAhoCorasick, list[tuple[int, ...]],
                                    list[tuple[tuple[int, int], ...]],
                                    list[tuple[tuple[int, int, bool], ...]]]] = []
        self._ac: Any = None  # the ahocorasick_rs module, when used
        self._literal_searchers: dict[tuple[bytes, ...], BytesAhoCorasick] = {}
        if self.keywords and use_automaton:
            try:
                import ahocorasick_rs
            except ImportError:
                log.info("ahocorasick-rs is not installed; keyword prefilter in pure Python")
            else:
                self._ac = ahocorasick_rs
                self._build(ahocorasick_rs)

    def _build(self, ac: Any) -> None:
        short = [k for k, kw in enumerate(self.keywords) if len(kw) < SHORT_KEYWORD]
        long = [k for k, kw in enumerate(self.keywords) if len(kw) >= SHORT_KEYWORD]
        for group in [long, *([k] for k in short)]:
            if not group:
                continue
            words = [self.keywords[k] for k in group]
            implied = [tuple(group[j] for j, kw in enumerate(words) if kw in pat)
                       for pat in words]
            hides = [tuple((group[j], at) for j, at in hidden_by(pat, words))
                     for pat in words]
            wanted = [j for j, k in enumerate(group) if k in self.anchored_keywords]
            near = [tuple((group[j], at, sure) for j, at, sure in
                          occurrences_near(pat, words, wanted)) for pat in words]
            automaton = ac.BytesAhoCorasick(words, matchkind=ac.MATCHKIND_LEFTMOST_LONGEST)
            self._searchers.append((automaton, implied, hides, near))

    def present(self, lowered: bytes, bounds: Sequence[int]) -> list[set[int]]:
        """The keywords found in each file of ``lowered`` (lowercased files joined by
        NULs; file ``n`` spans ``bounds[n]`` to ``bounds[n + 1] - 1``)."""
        return self.search(lowered, bounds)[0]

    def search(self, lowered: bytes, bounds: Sequence[int]
               ) -> tuple[list[set[int]], list[dict[int, list[int]]] | None]:
        """``present``, and where the anchored keywords start in each file (positions
        in ``lowered``; None without the automatons: ``rules_for`` then finds them).

        Each automaton's search is leftmost-longest and non-overlapping, so it reports
        some occurrences only: a keyword inside a reported one is implied by it
        (``secret`` by ``aws_secret``), and one that starts inside a reported one and
        ends past it (``t3blbkfj`` after ``secret``) is checked for where it would start
        (``hidden_by``). An occurrence that is not reported overlaps a reported one (the
        search would have reported it otherwise), so the positions of the anchored
        keywords follow from the reported matches too (``occurrences_near``). No keyword
        holds a NUL, so no match spans two files.
        """
        found: list[set[int]] = [set() for _ in range(len(bounds) - 1)]
        if not self._searchers:
            for n in range(len(found)):
                lo, hi = bounds[n], bounds[n + 1] - 1
                found[n].update(k for k, kw in enumerate(self.keywords)
                                if lowered.find(kw, lo, hi) >= 0)
            return found, None
        keywords = self.keywords
        spots: list[dict[int, list[int]]] = [{} for _ in found]
        for automaton, implied, hides, near in self._searchers:
            reported: set[tuple[int, int]] = set()  # (file, pattern)
            n, hi = 0, bounds[1]
            for pat, start, _ in automaton.find_matches_as_indexes(lowered):
                if start >= hi:
                    n = bisect.bisect_right(bounds, start) - 1
                    hi = bounds[n + 1]
                reported.add((n, pat))
                for k, at in hides[pat]:
                    if lowered.startswith(keywords[k], start + at):
                        found[n].add(k)
                for k, at, sure in near[pat]:
                    if sure or lowered.startswith(keywords[k], start + at):
                        spots[n].setdefault(k, []).append(start + at)
            for n, pat in reported:
                found[n].update(implied[pat])
        return found, spots

    def files_holding(self, literals: tuple[bytes, ...], joined: bytes,
                      bounds: Sequence[int]) -> set[int]:
        """The files of ``joined`` (as in ``present``, original case) holding one of
        ``literals`` (exact case)."""
        files: set[int] = set()
        if self._ac is None:
            for n in range(len(bounds) - 1):
                if any(joined.find(lit, bounds[n], bounds[n + 1] - 1) >= 0 for lit in literals):
                    files.add(n)
            return files
        searcher = self._literal_searchers.get(literals)
        if searcher is None:
            searcher = self._ac.BytesAhoCorasick(list(literals),
                                                 matchkind=self._ac.MATCHKIND_LEFTMOST_LONGEST)
            self._literal_searchers[literals] = searcher
        hi = -1
        for _, start, _ in searcher.find_matches_as_indexes(joined):
            if start >= hi:
                n = bisect.bisect_right(bounds, start) - 1
                files.add(n)
                hi = bounds[n + 1]
        return files

    def rules_for(self, keywords: set[int], lowered: bytes, lo: int, hi: int,
                  spots: dict[int, list[int]] | None = None
                  ) -> tuple[list[int], dict[int, list[int]]]:
        """The rules the ``keywords`` present in ``lowered[lo:hi]`` call for (in rule
        order), and for the ``anchored`` ones, where their keywords start (from ``lo``;
        given by ``spots`` from ``search``, else looked for here)."""
        hit = set(self.always)
        anchored: dict[int, set[int]] = {}
        for k in keywords:
            hit.update(self.rules_of[k])
            if k not in self.anchored_keywords:
                continue
            if spots is not None:
                positions = {at - lo for at in spots.get(k, ())}
            else:
                kw, positions = self.keywords[k], set()
                at = lowered.find(kw, lo, hi)
                while at >= 0:
                    positions.add(at - lo)
                    at = lowered.find(kw, at + 1, hi)
            for i in self.rules_of[k]:
                if i in self.anchored_rules:
                    anchored.setdefault(i, set()).update(positions)
        for i in self.line_rules.intersection(anchored):
            anchored[i] = {_line_start(lowered, lo, lo + at) - lo for at in anchored[i]}
        return sorted(hit), {i: sorted(p) for i, p in anchored.items()}

    def lookup(self, data: bytes) -> tuple[list[int], dict[int, list[int]]]:
        """Positions of the rules that can match ``data`` (in rule order), and for those
        that are ``anchored``, where their keywords start."""
        lowered = data.lower()
        found, spots = self.search(lowered, (0, len(lowered) + 1))
        return self.rules_for(found[0], lowered, 0, len(lowered),
                              None if spots is None else spots[0])


_SPACE = frozenset(b" \t\n\r\f\v")  # what \s means in a bytes pattern


def _line_start(data: bytes, lo: int, at: int) -> int:
    """For a ``from_line`` rule's keyword at ``at``: the one place a match through it can
    start, the first line start in the whitespace before the run of non-space bytes
    holding the keyword (``at`` itself when no line starts there: the regex then fails,
    as it would)."""
    run = at
    while run > lo and data[run - 1] not in _SPACE:
        run -= 1
    space = run
    while space > lo and data[space - 1] in _SPACE:
        space -= 1
    if space == lo:
        return lo
    newline = data.find(b"\n", space, run)
    return at if newline < 0 else newline + 1


def _matches_at(pattern: re.Pattern[bytes], data: bytes,
                starts: list[int]) -> Iterator[re.Match[bytes]]:
    """What ``pattern.finditer(data)`` yields for a pattern whose matches all begin at one
    of ``starts``: tried there only, each past the end of the previous match."""
    end = 0
    for pos in starts:
        if pos < end:
            continue
        m = pattern.match(data, pos)
        if m is not None:
            end = max(m.end(), pos + 1)
            yield m


class SecretScanner:
    def __init__(self, rules: Sequence[SecretRule] = RULES,
                 allow_rules: Sequence[AllowRule] = ALLOW_RULES,
                 max_bytes: int = 2 << 20) -> None:
        self.rules = tuple(rules)
        self.allow_rules = tuple(allow_rules)
        self.max_bytes = max_bytes
        self._index = KeywordIndex(self.rules)
        # (the substrings as one alternation: a search is cheaper than a loop of tests)
        self._allow_needs = [(re.compile("|".join(re.escape(n) for n in a.needs)), a.path)
                             for a in self.allow_rules
                             if a.path is not None and not a.directory and a.needs]
        # every rule's substrings in one search: most paths hold none, and are then done
        self._any_needs = re.compile("|".join(
            re.escape(n) for a in self.allow_rules
            if a.path is not None and not a.directory for n in a.needs)) \
            if len(self._allow_needs) > 1 else None
        self._allow_paths = self._one_pattern(
            [a.path for a in self.allow_rules
             if a.path is not None and not a.directory and not a.needs])
        self._allow_dirs = self._one_pattern(
            [a.path for a in self.allow_rules if a.path is not None and a.directory])
        self._dir_allowed: dict[str, bool] = {}  # directory -> a directory rule matches
        self._allow_values = [a.regex for a in self.allow_rules if a.regex is not None]
        for rule in self.rules:
            if not rule.keywords:
                log.info("secret rule without keywords runs on every text file",
                         extra={"rule": rule.id})
        digest = hashlib.sha256(repr((
            [(r.id, r.title, str(r.severity), r.pattern.pattern, r.group, r.min_entropy,
              r.keywords, _allow_key(r.allow), r.path and r.path.pattern, r.literals,
              r.from_line)
             for r in self.rules],
            _allow_key(self.allow_rules), max_bytes)).encode())
        self.fingerprint = "s" + digest.hexdigest()[:12]  # part of the layer cache key

    def wants(self, path: str) -> bool:
        """False when an allow rule takes the whole file out of the scan."""
        if self._allow_dirs:
            directory = path[:path.rfind("/") + 1]
            allowed = self._dir_allowed.get(directory)
            if allowed is None:
                if len(self._dir_allowed) >= DIR_CACHE:
                    self._dir_allowed.clear()
                allowed = any(p.search(directory) for p in self._allow_dirs)
                self._dir_allowed[directory] = allowed
            if allowed:
                return False
        if self._any_needs is None or self._any_needs.search(path):
            for needs, pattern in self._allow_needs:
                if needs.search(path) and pattern.search(path):
                    return False
        return not any(p.search(path) for p in self._allow_paths)

    @staticmethod
    def _one_pattern(patterns: list[re.Pattern[str]]) -> list[re.Pattern[str]]:
        """The path allow rules as one alternation (one search per file), when they combine."""
        if len(patterns) < 2 or any(p.flags != re.UNICODE for p in patterns):
            return patterns
        try:
            return [re.compile("|".join(f"(?:{p.pattern})" for p in patterns))]
        except re.error:
            return patterns

    def is_text(self, data: bytes) -> bool:
        """Not a binary file: no NUL in the first BINARY_PROBE bytes."""
        return b"\x00" not in data[:BINARY_PROBE]

    def scan_file(self, path: str, data: bytes, layer: str) -> list[SecretFinding]:
        if not self.wants(path) or not self.is_text(data):
            return []
        return self.scan_texts([(path, data)], layer)

    def scan_texts(self, files: Sequence[tuple[str, bytes]], layer: str
                   ) -> list[SecretFinding]:
        """Findings in text files the caller already passed through ``wants`` and
        ``is_text``, in the order of the files: what ``scan_file`` on each would give, but
        with one keyword lookup for all of them (the layer scan hands files over about
        a MiB at a time)."""
        if not files:
            return []
        joined = b"\x00".join(data for _, data in files)
        lowered = joined.lower()
        bounds = [0]
        for _, data in files:
            bounds.append(bounds[-1] + len(data) + 1)
        present, spots = self._index.search(lowered, bounds)
        always = bool(self._index.always)
        findings: list[SecretFinding] = []
        literal_files: dict[int, set[int]] = {}  # rule -> files holding one of its literals
        for n, (path, data) in enumerate(files):
            if present[n] or always:
                candidates, starts = self._index.rules_for(
                    present[n], lowered, bounds[n], bounds[n + 1] - 1,
                    None if spots is None else spots[n])
                candidates = [i for i in candidates if not self.rules[i].literals
                              or n in self._with_literals(i, joined, bounds, literal_files)]
                findings.extend(self._match(path, data, layer, candidates, starts))
        return findings

    def _with_literals(self, i: int, joined: bytes, bounds: Sequence[int],
                       done: dict[int, set[int]]) -> set[int]:
        """The files of ``joined`` that hold one of rule ``i``'s literals (once per batch)."""
        if i not in done:
            done[i] = self._index.files_holding(self.rules[i].literals, joined, bounds)
        return done[i]

    def _match(self, path: str, data: bytes, layer: str, candidates: list[int],
               starts: dict[int, list[int]]) -> list[SecretFinding]:
        findings: list[SecretFinding] = []
        for i in candidates:
            rule = self.rules[i]
            if rule.path is not None and not rule.path.search(path):
                continue
            if any(a.path is not None and a.path.search(path) for a in rule.allow):
                continue
            seen: set[int] = set()
            matches = (_matches_at(rule.pattern, data, starts[i]) if i in starts
                       else rule.pattern.finditer(data))
            for m in matches:
                value = m.group(rule.group).decode("utf-8", "replace")
                if rule.min_entropy and shannon_entropy(value) < rule.min_entropy:
                    continue
                if self._allowed_value(rule, value):
                    continue
                line = data.count(b"\n", 0, m.start()) + 1
                if line in seen:
                    continue
                seen.add(line)
                findings.append(SecretFinding(rule.id, rule.title, rule.severity, path, layer,
                                              line, mask(value)))
        return findings

    def _allowed_value(self, rule: SecretRule, value: str) -> bool:
        if any(r.search(value) for r in self._allow_values):
            return True
        return any(a.regex is not None and a.regex.search(value) for a in rule.allow)


def _allow_key(rules: Sequence[AllowRule]) -> list[tuple[str, str | None, str | None]]:
    return [(a.id, a.path and a.path.pattern, a.regex and a.regex.pattern) for a in rules]
