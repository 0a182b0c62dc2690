"""Package URLs (purl spec) for inventory records, built with packageurl-python."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packageurl import PackageURL

if TYPE_CHECKING:
    from moray.controlplane.scanner.model import Package

_DISTRO_NAMESPACE = {"deb": "debian", "apk": "alpine", "rpm": ""}


def package_purl(pkg: Package) -> str:
    qualifiers: dict[str, str] = {}
    namespace = pkg.namespace or None
    eco = str(pkg.ecosystem)
    if eco in _DISTRO_NAMESPACE:
        namespace = pkg.distro.split("-")[0] or _DISTRO_NAMESPACE[eco] or None
        if pkg.arch:
            qualifiers["arch"] = pkg.arch
        if pkg.distro:
            qualifiers["distro"] = pkg.distro
        if pkg.source_name and pkg.source_name != pkg.name:
            qualifiers["upstream" if eco == "rpm" else "source"] = pkg.source_name
    name = pkg.name
    if eco == "golang" and "/" in name:
        namespace, _, name = name.rpartition("/")
    if eco == "pypi":
        name = name.lower().replace("_", "-")
    return PackageURL(type=eco, namespace=namespace, name=name, version=pkg.version,
                      qualifiers=qualifiers or None).to_string()
