"""Vulnerability knowledge base: imports advisories from files, matches packages.

Formats: OSV JSON (files or directory trees), the Debian security tracker JSON (as
published by vuln-list-debian) and Alpine secdb (whole-release files or per-package
files). Everything is imported offline into ``controlplane.store.scanstore.ScanStore``;
nothing is fetched at scan time. Version comparisons use each ecosystem's own order via
univers (``versions.py``).
"""
