"""The SPDX 2.3 JSON document of a scan (``--format spdx-json``).

One package for the image (the document DESCRIBES it) that CONTAINS one package per
distinct purl; each package carries its purl as a PACKAGE-MANAGER external reference, the
file it was found in, and ``licenseDeclared``: the package's licenses (already SPDX
expressions, engine.licenses) joined with AND, ``NOASSERTION`` when it declares none.
A ``LicenseRef-*`` it uses is defined in ``hasExtractedLicensingInfos``, as SPDX requires.
``licenseConcluded`` is ``NOASSERTION``: the scanner reads declarations, it does not
conclude. Written by hand (a few dozen fields) rather than through spdx-tools, which
would pull rdflib and more into every scanner install; the tests check the output with
spdx-tools' own validator.
"""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from moray.controlplane.scanner.engine.licenses import KNOWN_REFS, UNKNOWN_PREFIX
from moray.controlplane.scanner.engine.model import ScanResult

NAMESPACE_BASE = "https://spdx.moray.dev/spdxdocs"
_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]+")
_REF = re.compile(r"LicenseRef-[A-Za-z0-9.-]+")


def _spdx_id(text: str, n: int) -> str:
    return f"SPDXRef-Package-{n}-{_ID_CHARS.sub('-', text)[:60].strip('-')}"


def to_spdx(result: ScanResult, created: datetime.datetime | None = None) -> dict[str, Any]:
    from moray.controlplane.scanner.engine.report import TOOL_NAME, TOOL_VERSION

    now = (created or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    image_id = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [{
        "SPDXID": image_id, "name": result.image, "versionInfo": result.digest,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION", "primaryPackagePurpose": "CONTAINER",
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    refs: set[str] = set()
    seen: set[str] = set()
    for p in result.packages:
        purl = p.purl
        if purl in seen:
            continue
        seen.add(purl)
        spdx_id = _spdx_id(p.name, len(seen))
        declared = "NOASSERTION"
        if p.licenses:
            declared = " AND ".join(f"({e})" if " " in e and len(p.licenses) > 1 else e
                                    for e in p.licenses)
            refs.update(_REF.findall(declared))
        pkg: dict[str, Any] = {
            "SPDXID": spdx_id, "name": p.name, "versionInfo": p.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "sourceInfo": f"found in {p.path} (layer {p.layer})" if p.layer else
                          f"found in {p.path}",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER",
                              "referenceType": "purl", "referenceLocator": purl}],
        }
        packages.append(pkg)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{result.image}@{result.digest}",
        "documentNamespace": f"{NAMESPACE_BASE}/{_ID_CHARS.sub('-', result.image)[:80]}-"
                             f"{uuid.uuid4()}",
        "creationInfo": {"created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": [f"Tool: {TOOL_NAME}-{TOOL_VERSION}"]},
        "packages": packages,
        "relationships": relationships,
    }
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "name": ref.removeprefix(UNKNOWN_PREFIX),
             "extractedText": ("public domain" if ref in KNOWN_REFS else
                               f"declared as {ref.removeprefix(UNKNOWN_PREFIX)!r}; the text "
                               "is not on the SPDX license list")}
            for ref in sorted(refs)]
    return doc
