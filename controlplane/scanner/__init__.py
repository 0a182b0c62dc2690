"""Static container image scanner.

Reads an image (OCI layout, docker/OCI archive, registry) layer by layer as streams,
inventories packages, finds secrets, malware and configuration risks, and matches the
packages against the vulnerability knowledge base (``controlplane.vulndb``).
"""
