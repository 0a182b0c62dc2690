"""Licenses: declared in every ecosystem, normalised to SPDX, in JSON, table, CycloneDX
and SPDX 2.3, and checked by policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from moray.controlplane.scanner.cli import main
from moray.controlplane.scanner.engine import licenses
from moray.controlplane.scanner.engine.policy import evaluate, policy_from_dict
from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.source import ArchiveSource
from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import Image

SP = "usr/lib/python3/dist-packages/"
# DEP-5 copyright (as zlib's), a prose one pointing at common-licenses (as libc6's)
ZLIB_COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zlib

Files: *
Copyright: 1995-2013 Jean-loup Gailly and Mark Adler
License: Zlib

Files: debian/*
Copyright: 2000 Mark Brown
License: Zlib

License: Zlib
 This software is provided 'as-is', without any express or implied warranty.
"""
LIBC_COPYRIGHT = b"""This is the Debian prepackaged version of the GNU C Library.
...
On Debian systems, the complete text of the GNU Lesser General Public License
can be found in `/usr/share/common-licenses/LGPL-2.1'. Parts are under
the GNU General Public License, in `/usr/share/common-licenses/GPL-2'.
"""
BASH_COPYRIGHT = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" \
    b"\nFiles: *\nLicense: GPL-3+\n"
POM = b"""<project xmlns="http://maven.apache.org/POM/4.0.0"><groupId>org.yaml</groupId>
<artifactId>snakeyaml</artifactId><version>1.33</version><licenses><license>
<name>Apache License, Version 2.0</name></license></licenses></project>"""


def _py(name: str, headers: str) -> dict[str, bytes]:
    return {f"{SP}{name}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.0\n{headers}\n\nbody\n".encode()}


def licensed_image() -> Image:
    deb = {"etc/os-release": rootfs.DEBIAN_OS_RELEASE,
           "var/lib/dpkg/status": rootfs.dpkg_status(rootfs.DEBIAN_PACKAGES),
           "usr/share/doc/zlib1g/copyright": ZLIB_COPYRIGHT,
           "usr/share/doc/libc6/copyright": LIBC_COPYRIGHT,
           "usr/share/doc/bash/copyright": BASH_COPYRIGHT}
    lang = {
        **_py("modern", "License-Expression: MIT OR Apache-2.0\nLicense: ignored"),
        **_py("classic", "Classifier: Programming Language :: Python\n"
                         "Classifier: License :: OSI Approved :: BSD License\n"
                         "Classifier: License :: OSI Approved :: MIT License"),
        **_py("prose", "License: Copyright (c) someone\n  all the text of a license"),
        "app/node_modules/left-pad/package.json": json.dumps(
            {"name": "left-pad", "version": "1.3.0", "license": "WTFPL"}).encode(),
        "app/node_modules/old/package.json": json.dumps(
            {"name": "old", "version": "0.1.0", "licenses": [{"type": "MIT"},
                                                              {"type": "GPL-2.0"}]}).encode(),
        "app/lib/snakeyaml-1.33.jar": rootfs.jar(
            {"META-INF/maven/org.yaml/snakeyaml/pom.xml": POM}),
        "var/lib/rpm/rpmdb.sqlite": rootfs.rpmdb_sqlite([
            {1000: "bash", 1001: "4.4.20", 1002: "4.el8", 1022: "x86_64",
             1014: "GPLv3+"},
            {1000: "glibc", 1001: "2.28", 1002: "225.el8", 1022: "x86_64",
             1014: "LGPLv2+ and LGPLv2+ with exceptions and GPLv2+"}]),
        "lib/apk/db/installed": rootfs.apk_installed([("musl", "1.2.4-r1", "musl")]),
    }
    # a layer deleting one copyright file: its package has no license left
    return Image([deb, lang, {"usr/share/doc/bash/.wh.copyright": b""}],
                 config={"User": "1000"})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lic") / "licensed.tar"
    licensed_image().write_docker_archive(path)
    return path


def _by_name(path: Path) -> dict[str, tuple[str, ...]]:
    result = scan_image(ArchiveSource(path), ScanOptions())
    return {f"{p.ecosystem}/{p.name}": p.licenses for p in result.packages}


def test_declared_licenses_per_ecosystem(image: Path) -> None:
    got = _by_name(image)
    assert got["deb/zlib1g"] == ("Zlib",)
    assert got["deb/libc6"] == ("LGPL-2.1-only", "GPL-2.0-only")  # from common-licenses
    assert got["deb/libc-bin"] == ()  # no usr/share/doc/libc-bin (nor glibc) here
    assert got["deb/bash"] == ()  # the copyright file was deleted by a later layer
    assert got["pypi/modern"] == ("MIT OR Apache-2.0",)
    assert got["pypi/classic"] == ("LicenseRef-BSD", "MIT")
    assert got["pypi/prose"] == ()
    assert got["npm/left-pad"] == ("WTFPL",)
    assert got["npm/old"] == ("MIT", "GPL-2.0-only")
    assert got["maven/snakeyaml"] == ("Apache-2.0",)
    assert got["rpm/bash"] == ("GPL-3.0-or-later",)
    assert got["rpm/glibc"] == (  # "with exceptions" names no SPDX exception
        "LGPL-2.0-or-later AND LicenseRef-LGPLv2-with-exceptions AND GPL-2.0-or-later",)
    assert got["apk/musl"] == ("MIT",)


def test_normalise() -> None:
    n = licenses.normalise
    assert n("GPL-2+ or Artistic") == "GPL-2.0-or-later OR Artistic-1.0-Perl"
    assert n("GPLv2+ and LGPLv2+") == "GPL-2.0-or-later AND LGPL-2.0-or-later"
    assert n("The Apache Software License, Version 2.0") == "Apache-2.0"
    assert n("MIT AND (LGPL-2.1-or-later OR BSD-3-Clause)") == \
        "MIT AND (LGPL-2.1-or-later OR BSD-3-Clause)"
    assert n("(MIT OR Apache-2.0)") == "MIT OR Apache-2.0"
    assert n("GPL-2.0+") == "GPL-2.0-or-later"
    assert n("UNKNOWN") == n("see LICENSE") == ""
    assert n("Some Weird License") == "LicenseRef-Some-Weird-License"
    # URLs (Maven Bundle-License); license-expression's validate() raises on them
    assert n("http://www.apache.org/licenses/LICENSE-2.0.txt") == "Apache-2.0"
    assert n("https://opensource.org/licenses/MIT") == "MIT"
    assert n("https://github.com/diffplug/durian/blob/v1.2.0/LICENSE") == \
        "LicenseRef-github.com-diffplug-durian-blob-v1.2.0-LICENSE"
    assert licenses.forbidden_in(["MIT OR GPL-3.0-only"], ["GPL-3.0*"]) == []
    assert licenses.forbidden_in(["MIT AND GPL-3.0-only"], ["GPL-3.0*"]) == ["GPL-3.0-only"]
    assert licenses.forbidden_in(["GPL-2.0-only WITH Classpath-exception-2.0"], ["GPL-*"]) \
        == ["GPL-2.0-only"]
    assert licenses.is_unknown([]) and licenses.is_unknown(["LicenseRef-BSD"])
    # whatever an image declares, normalising and checking it never raises
    for hostile in ("(", ")", "MIT AND", "OR OR", "((MIT)", "MIT WITH", "a" * 400, "\x00",
                    "MIT AND (GPL-2.0 OR", "WITH WITH", "http://", "LicenseRef-"):
        got = n(hostile)
        licenses.forbidden_in([got] if got else [], ["GPL-*"])
        licenses.is_unknown([got] if got else [])
    assert not licenses.is_unknown(["LicenseRef-public-domain", "MIT"])


def test_policy_license_controls(image: Path) -> None:
    result = scan_image(ArchiveSource(image), ScanOptions())
    doc = {"metadata": {"name": "lic"}, "spec": {"licenses": {
        "forbidden": ["GPL-3.0*", "WTFPL"], "failOnUnknown": ["pypi", "npm"],
        "exceptions": ["left-pad"]}}}
    passed, reasons = evaluate(result, policy_from_dict(doc))
    assert not passed
    text = "\n".join(reasons)
    assert "1 packages under forbidden licenses (e.g. bash 4.4.20-4.el8 (GPL-3.0-or-later))" \
        in text
    assert "2 packages with no or an unknown license (e.g. classic 1.0 (LicenseRef-BSD, MIT), " \
        "prose 1.0)" in text
    allowed = {"metadata": {"name": "ok"}, "spec": {"licenses": {"forbidden": ["AGPL-*"]}}}
    assert evaluate(result, policy_from_dict(allowed)) == (True, [])


def test_reports(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(image), "-q", "--no-vulns", "--no-cache", "--no-malware", "--no-secrets"]
    assert main([*base]) == 0
    out = capsys.readouterr().out
    assert "Licenses: " in out and "no or unknown license: " in out
    assert main([*base, "-f", "cyclonedx", "-o", str(tmp_path / "bom.json")]) == 0
    text = (tmp_path / "bom.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    comps = {c["name"]: c.get("licenses") for c in json.loads(text)["components"]}
    assert comps["zlib1g"] == [{"license": {"id": "Zlib"}}]
    assert comps["modern"] == [{"expression": "MIT OR Apache-2.0"}]
    assert sum(1 for v in comps.values() if v) == 9
    assert main([*base, "-f", "spdx-json", "-o", str(tmp_path / "sbom.spdx.json")]) == 0
    spdx = json.loads((tmp_path / "sbom.spdx.json").read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3"
    declared = {p["name"]: p["licenseDeclared"] for p in spdx["packages"]}
    assert declared["libc6"] == "LGPL-2.1-only AND GPL-2.0-only"
    assert declared["bash"] in ("NOASSERTION", "GPL-3.0-or-later")
    refs = {x["licenseId"] for x in spdx["hasExtractedLicensingInfos"]}
    assert "LicenseRef-BSD" in refs


def test_spdx_document_is_valid(image: Path, tmp_path: Path) -> None:
    """spdx-tools' own parser and validator (test-only dependency)."""
    pytest.importorskip("spdx_tools")
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    out = tmp_path / "sbom.spdx.json"
    assert main([str(image), "-q", "--no-vulns", "--no-cache", "--no-malware",
                 "--no-secrets", "-f", "spdx-json", "-o", str(out)]) == 0
    messages = validate_full_spdx_document(parse_file(str(out)))
    assert [m.validation_message for m in messages] == []
