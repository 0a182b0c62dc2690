"""Declared licenses -> SPDX license expressions, and the license checks of policies.

Analyzers record what a package declares, verbatim (Debian copyright ``License:`` short
names, Python ``License-Expression`` / classifiers / ``License``, package.json, pom.xml
``<licenses>``, apk ``L:``, rpm ``License``); the scan normalises them here once, at the
end (``normalise``), so a better table never needs the layer cache redone.

Parsing, validating and rendering SPDX expressions is license-expression's (nexB, the
ScanCode authors; already a dependency of cyclonedx-python-lib): it knows the whole SPDX
list with its deprecated spellings (``GPL-2.0+`` -> ``GPL-2.0-or-later``), ``WITH``
exceptions and precedence, which a hand-written parser would get wrong. What it does not
know are the free-text names packages use (``Apache 2.0``, ``The Apache Software License,
Version 2.0``, Debian's ``GPL-2+`` and ``Expat``, Fedora's ``ASL 2.0`` / ``GPLv2+``, the
Python classifiers): ``_ALIASES`` maps those, one name per line. Anything else becomes
``LicenseRef-<name>`` (the SPDX way to name a license outside the list), which a policy
treats as unknown.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

NOT_A_LICENSE = {"", "unknown", "none", "noassertion", "see license", "see license file",
                 "license.txt", "license", "other", "other/proprietary license", "dual license"}
UNKNOWN_PREFIX = "LicenseRef-"
KNOWN_REFS = {"LicenseRef-public-domain"}  # not SPDX, but not unknown either

_ALIASES: dict[str, str] = {k.lower(): v for k, v in {
    # Debian copyright short names (DEP-5) and common-licenses file names
    "GPL-1": "GPL-1.0-only", "GPL-1+": "GPL-1.0-or-later",
    "GPL-2": "GPL-2.0-only", "GPL-2+": "GPL-2.0-or-later",
    "GPL-3": "GPL-3.0-only", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2": "LGPL-2.0-only", "LGPL-2+": "LGPL-2.0-or-later",
    "LGPL-2.1": "LGPL-2.1-only", "LGPL-2.1+": "LGPL-2.1-or-later",
    "LGPL-3": "LGPL-3.0-only", "LGPL-3+": "LGPL-3.0-or-later",
    "AGPL-3": "AGPL-3.0-only", "AGPL-3+": "AGPL-3.0-or-later",
    "GFDL-1.2": "GFDL-1.2-only", "GFDL-1.2+": "GFDL-1.2-or-later",
    "GFDL-1.3": "GFDL-1.3-only", "GFDL-1.3+": "GFDL-1.3-or-later",
    "Expat": "MIT", "Artistic": "Artistic-1.0-Perl", "Apache-2": "Apache-2.0",
    "MPL-1.1": "MPL-1.1", "MPL-2": "MPL-2.0", "BSD-2": "BSD-2-Clause", "BSD-3": "BSD-3-Clause",
    "BSD-4": "BSD-4-Clause", "PSF-2": "PSF-2.0", "public-domain": "LicenseRef-public-domain",
    "PD": "LicenseRef-public-domain", "Public Domain": "LicenseRef-public-domain",
    "CC0": "CC0-1.0", "Zlib": "Zlib", "zlib/libpng": "Zlib",
    # Fedora/RHEL (pre-SPDX) short names
    "ASL 2.0": "Apache-2.0", "ASL 1.1": "Apache-1.1", "GPLv2": "GPL-2.0-only",
    "GPLv2+": "GPL-2.0-or-later", "GPLv3": "GPL-3.0-only", "GPLv3+": "GPL-3.0-or-later",
    "LGPLv2": "LGPL-2.0-only", "LGPLv2+": "LGPL-2.0-or-later", "LGPLv2.1": "LGPL-2.1-only",
    "LGPLv2.1+": "LGPL-2.1-or-later", "LGPLv3": "LGPL-3.0-only", "LGPLv3+": "LGPL-3.0-or-later",
    "MPLv1.1": "MPL-1.1", "MPLv2.0": "MPL-2.0", "Boost": "BSL-1.0", "OpenSSL": "OpenSSL",
    # free text (pom.xml, package.json, Python License fields)
    "MIT License": "MIT", "The MIT License": "MIT", "MIT/X11": "MIT", "MIT-style": "MIT",
    "Apache 2.0": "Apache-2.0", "Apache 2": "Apache-2.0", "Apache License 2.0": "Apache-2.0",
    "Apache License, Version 2.0": "Apache-2.0", "Apache License Version 2.0": "Apache-2.0",
    "The Apache Software License, Version 2.0": "Apache-2.0",
    "The Apache License, Version 2.0": "Apache-2.0", "Apache Software License": "Apache-2.0",
    "Apache Software License 2.0": "Apache-2.0", "Apache-2.0 License": "Apache-2.0",
    "BSD 3-Clause": "BSD-3-Clause", "BSD 3-Clause License": "BSD-3-Clause",
    "New BSD License": "BSD-3-Clause", "Modified BSD License": "BSD-3-Clause",
    "The BSD 3-Clause License": "BSD-3-Clause", "3-Clause BSD License": "BSD-3-Clause",
    "BSD 2-Clause": "BSD-2-Clause", "Simplified BSD License": "BSD-2-Clause",
    "The BSD 2-Clause License": "BSD-2-Clause", "2-Clause BSD License": "BSD-2-Clause",
    "Eclipse Public License 1.0": "EPL-1.0", "Eclipse Public License - v 1.0": "EPL-1.0",
    "Eclipse Public License v2.0": "EPL-2.0", "Eclipse Public License - v 2.0": "EPL-2.0",
    "EPL 2.0": "EPL-2.0", "Eclipse Distribution License - v 1.0": "BSD-3-Clause",
    "GNU General Public License v2.0": "GPL-2.0-only",
    "GNU General Public License, version 2": "GPL-2.0-only",
    "GNU General Public License v3.0": "GPL-3.0-only",
    "GNU Lesser General Public License": "LGPL-2.1-or-later",
    "GNU Lesser General Public License v2.1": "LGPL-2.1-only",
    "GNU Lesser General Public License v3.0": "LGPL-3.0-only",
    "CDDL + GPLv2 with classpath exception":
        "CDDL-1.0 OR GPL-2.0-only WITH Classpath-exception-2.0",
    "Mozilla Public License 2.0": "MPL-2.0", "Mozilla Public License, Version 2.0": "MPL-2.0",
    "ISC License": "ISC", "Python Software Foundation License": "PSF-2.0",
    "PSF License": "PSF-2.0", "Unlicense": "Unlicense", "WTFPL": "WTFPL",
    "Bouncy Castle Licence": "MIT", "Go License": "BSD-3-Clause",
    "Universal Permissive License, Version 1.0": "UPL-1.0",
    # the last segment of Python's "License :: ..." trove classifiers
    "BSD License": "LicenseRef-BSD",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "GNU Affero General Public License v3": "AGPL-3.0-only",
    "GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "GNU Library or Lesser General Public License (LGPL)": "LGPL-2.0-or-later",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0", "ISC License (ISCL)": "ISC",
    "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "The Unlicense (Unlicense)": "Unlicense", "Zope Public License": "ZPL-2.1",
    "Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0", "Python License (CNRI Python License)":
        "CNRI-Python",
}.items()}

# operators of the free-text lists: Debian "GPL-2+ or Artistic", rpm "GPLv2+ and LGPLv2+",
# npm's old "(MIT OR Apache-2.0)", comma- or slash-separated lists meaning "and"/"or"
_SPLIT = re.compile(r"\s+(and|or|AND|OR)\s+|\s*[,;]\s*|\s+/\s+")
_REF_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


@functools.cache
def _licensing() -> Any:
    from license_expression import get_spdx_licensing  # only scans with licenses need it

    return get_spdx_licensing()


def _spdx(text: str) -> str | None:
    """``text`` as a valid SPDX expression rendered canonically, or None."""
    from license_expression import ExpressionError

    try:
        info = _licensing().validate(text)
    # validate() itself fails on some inputs (a URL: an ExpressionError without the
    # token_string it reads)
    except (ExpressionError, AttributeError, TypeError, ValueError):
        return None
    return str(info.normalized_expression) if not info.errors else None


# license URLs (Maven's Bundle-License and <url>-like names): host/path -> SPDX id
_URLS = [
    (re.compile(r"apache\.org/licenses/LICENSE-2\.0"), "Apache-2.0"),
    (re.compile(r"opensource\.org/licenses?/([A-Za-z0-9.+-]+?)(?:\.php|\.html)?/?$"), ""),
    (re.compile(r"eclipse\.org/legal/epl-v10"), "EPL-1.0"),
    (re.compile(r"eclipse\.org/(legal/epl-2\.0|org/documents/epl-2\.0)"), "EPL-2.0"),
    (re.compile(r"gnu\.org/licenses/(old-licenses/)?lgpl-2\.1"), "LGPL-2.1-only"),
    (re.compile(r"gnu\.org/licenses/(old-licenses/)?gpl-2\.0"), "GPL-2.0-only"),
    (re.compile(r"gnu\.org/licenses/lgpl(-3\.0)?(\.html|\.txt)?$"), "LGPL-3.0-only"),
    (re.compile(r"gnu\.org/licenses/gpl(-3\.0)?(\.html|\.txt)?$"), "GPL-3.0-only"),
    (re.compile(r"mozilla\.org/(en-US/)?MPL/2\.0"), "MPL-2.0"),
    (re.compile(r"spdx\.org/licenses/([A-Za-z0-9.+-]+?)(?:\.html|\.json)?$"), ""),
]


def _from_url(url: str) -> str:
    for pattern, spdx_id in _URLS:
        m = pattern.search(url)
        if m:
            return spdx_id or _spdx(m.group(1)) or _ALIASES.get(m.group(1).lower(), "")
    return ""


def license_ref(text: str) -> str:
    return UNKNOWN_PREFIX + (_REF_CHARS.sub("-", text.strip()).strip("-")[:64] or "unknown")


@functools.lru_cache(maxsize=4096)
def normalise(raw: str) -> str:
    """One declared license (name, id or expression) -> an SPDX expression; "" when it
    says nothing (``UNKNOWN``, ``see LICENSE``)."""
    text = " ".join(raw.split())
    if _wrapped(text):
        text = text[1:-1].strip()
    if text.lower() in NOT_A_LICENSE or len(text) > 300:
        return ""
    alias = _ALIASES.get(text.lower())
    if alias:
        return alias
    if text.startswith(UNKNOWN_PREFIX):
        return license_ref(text.removeprefix(UNKNOWN_PREFIX))
    if text.startswith(("http://", "https://")):
        return _from_url(text) or license_ref(text.split("://", 1)[1])
    parsed = _spdx(text)
    if parsed:
        return parsed
    # a list with free-text members: map each, join with the operator it was written with
    parts = _SPLIT.split(text)
    if len(parts) > 1:
        names, ops = parts[0::2], parts[1::2]
        mapped = [_one(n) for n in names]
        if all(mapped):
            joined = mapped[0]
            for op, name in zip(ops, mapped[1:], strict=True):
                word = "OR" if (op or "").lower() == "or" or (op is None and "/" in text) \
                    else "AND"
                joined = f"{joined} {word} {name}"
            return _spdx(joined) or joined
    return license_ref(text)


def _wrapped(text: str) -> bool:
    """Whether one pair of parentheses encloses all of ``text``."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for i, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and i < len(text) - 1:
            return False
    return depth == 0


def _one(name: str) -> str:
    """One member of a free-text list: an alias, an SPDX id, else a LicenseRef."""
    text = name.strip().strip("()").strip()
    if not text:
        return ""
    return _ALIASES.get(text.lower()) or _spdx(text) or license_ref(text)


def normalise_all(raw: Iterable[str]) -> tuple[str, ...]:
    """Distinct normalised licenses, in the order declared."""
    out: dict[str, None] = {}
    for r in raw:
        n = normalise(r)
        if n:
            out[n] = None
    return tuple(out)


def is_unknown(expressions: Sequence[str]) -> bool:
    """No license, or one that is not on the SPDX list (a LicenseRef other than the few
    known ones)."""
    if not expressions:
        return True
    return any(sym.startswith(UNKNOWN_PREFIX) and sym not in KNOWN_REFS
               for e in expressions for sym in _symbols(e))


def _symbols(expression: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9.+:-]+", expression.replace("(", " ").replace(")", " "))


def forbidden_in(expressions: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The licenses of ``patterns`` (fnmatch on SPDX ids, ``AGPL-*``) a package cannot
    avoid: every declared expression must be satisfiable without them (``A OR B`` is fine
    when either is allowed; ``A AND B`` needs both)."""
    from license_expression import ExpressionError

    found: list[str] = []
    for e in expressions:
        if e.startswith(UNKNOWN_PREFIX) and " " not in e:
            hits = [e] if any(fnmatch.fnmatch(e, p) for p in patterns) else []
        else:
            try:
                tree = _licensing().parse(e, validate=False)
            except (ExpressionError, AttributeError, TypeError, ValueError):
                tree = None
            hits = _unavoidable(tree, patterns) if tree is not None else sorted(
                {sym for sym in _symbols(e) if any(fnmatch.fnmatch(sym, p) for p in patterns)})
        found.extend(h for h in hits if h not in found)
    return found


def _unavoidable(node: Any, patterns: Sequence[str]) -> list[str]:
    from license_expression import AND, OR, LicenseWithExceptionSymbol

    if isinstance(node, OR):
        branches = [_unavoidable(a, patterns) for a in node.args]
        return [] if any(not b for b in branches) else sorted({x for b in branches for x in b})
    if isinstance(node, AND):
        return sorted({x for a in node.args for x in _unavoidable(a, patterns)})
    if isinstance(node, LicenseWithExceptionSymbol):
        node = node.license_symbol
    key = str(getattr(node, "key", node))
    return [key] if any(fnmatch.fnmatch(key, p) for p in patterns) else []
