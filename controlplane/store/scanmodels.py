"""The scanner's tables (SQLAlchemy Core), on the control plane's metadata so that the
alembic migrations in ``controlplane/store/migrations`` create and change them.

The stores in ``controlplane/store/scan/`` are the only code that issues SQL for them;
the data each table owns, and when it changes, is listed in their docstrings. Before
revision 0002 these tables were created by ``ScanStore`` itself (plain sqlite3,
``CREATE TABLE IF NOT EXISTS``); 0002 adopts such tables instead of recreating them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from moray.controlplane.store.models import Base, BigId

metadata = Base.metadata

# Jobs that hold their (image, policy, registry options) key: a second enqueue of the
# same key is refused by this partial unique index, in SQLite and in PostgreSQL alike.
ACTIVE_JOB = "status IN ('queued', 'running')"

scanstore_meta = Table(
    "scanstore_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

vuln_advisory = Table(
    "vuln_advisory", metadata,
    Column("id", String(256), primary_key=True),
    Column("aliases", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("severity", String(32), nullable=False),
    Column("cvss_score", Float, nullable=True),
    Column("modified", String(64), nullable=False),
    Column("sources", Text, nullable=False),
)

vuln_alias = Table(
    "vuln_alias", metadata,
    Column("alias", String(256), nullable=False),
    Column("advisory_id", String(256), nullable=False),
    PrimaryKeyConstraint("alias", "advisory_id"),
)

vuln_affected = Table(
    "vuln_affected", metadata,
    Column("advisory_id", String(256), nullable=False),
    Column("source", String(64), nullable=False),
    Column("origin", Text, nullable=False),
    Column("ecosystem", String(64), nullable=False),
    Column("release", String(128), nullable=False),
    Column("package", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("ranges", Text, nullable=False),
    Column("versions", Text, nullable=False),
    Column("fixed", Text, nullable=False),
    Index("vuln_affected_pkg", "ecosystem", "package"),
    Index("vuln_affected_origin", "source", "origin"),
)

vuln_import = Table(
    "vuln_import", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False),
    Column("records", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("imported_at", Float, nullable=False),
)

scan_layer_cache = Table(
    "scan_layer_cache", metadata,
    Column("digest", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("result", Text, nullable=False),
    Column("created", Float, nullable=False),
    PrimaryKeyConstraint("digest", "version"),
)

scan_job = Table(
    "scan_job", metadata,
    # revision 0009: the tenant that registered or queued it
    Column("tenant", String(128), nullable=False, server_default="default"),
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("image", Text, nullable=False),
    Column("policy", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("worker", Text, nullable=False, server_default=""),
    Column("lease_until", Float, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("digest", Text, nullable=False, server_default=""),
    Column("error", Text, nullable=False, server_default=""),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("insecure", Boolean, nullable=False, server_default=text("false")),
    Column("credentials", Text, nullable=False, server_default=""),
    Column("job_key", String(64), nullable=False, server_default=""),
    Column("generation", Integer, nullable=False, server_default="0"),
    Index("scan_job_status", "status", "lease_until"),
    Index("scan_job_image", "image"),
    Index("uq_scan_job_active", "job_key", unique=True,
          sqlite_where=text(ACTIVE_JOB), postgresql_where=text(ACTIVE_JOB)),
)

image_verdict = Table(
    "image_verdict", metadata,
    Column("image_digest", String(128), nullable=False),
    Column("policy", String(253), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("vulndb_generation", Integer, nullable=False),
    Column("image", Text, nullable=False),
    Column("created", Float, nullable=False),
    # revision 0006: the image's config digest (docker's image ID), '' when not known
    Column("config_digest", String(128), nullable=False, server_default=""),
    PrimaryKeyConstraint("image_digest", "policy"),
    # revision 0013: the images list's keyset pages by reference (passed: its verdict
    # filter read from the index)
    Index("image_verdict_image", "image", "image_digest", "passed"),
)

scan_registry = Table(
    "scan_registry", metadata,
    # revision 0009: the tenant that registered or queued it
    Column("tenant", String(128), nullable=False, server_default="default"),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("registry", String(300), nullable=False),
    Column("repositories", JSON, nullable=False),
    Column("credentials", Text, nullable=False),
    Column("insecure", Boolean, nullable=False),
    Column("interval_seconds", Float, nullable=False),
    Column("policy", Text, nullable=False),
    Column("next_run", Float, nullable=False),
    Column("last_run", Float, nullable=True),
    Column("last_images", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("created", Float, nullable=False),
)

scan_image = Table(
    "scan_image", metadata,
    # revision 0009: the tenant that registered or queued it
    Column("tenant", String(128), nullable=False, server_default="default"),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image", Text, nullable=False),
    Column("credentials", Text, nullable=False),
    Column("insecure", Boolean, nullable=False),
    Column("interval_seconds", Float, nullable=False),
    Column("policy", Text, nullable=False),
    Column("next_run", Float, nullable=False),
    Column("last_run", Float, nullable=True),
    Column("created", Float, nullable=False),
)

# The vulnerabilities found in an image at its last verdict, one row per id: a finding's
# own id and each of its aliases (``advisory`` is the finding's id), so "which images have
# CVE-X" is one indexed lookup whatever name the advisory gave it (revision 0004).
image_vuln = Table(
    "image_vuln", metadata,
    Column("image_digest", String(128), nullable=False),
    Column("vuln_id", String(256), nullable=False),
    Column("advisory", String(256), nullable=False),
    Column("severity", String(32), nullable=False),
    Column("package", String(512), nullable=False),
    Column("version", String(256), nullable=False),
    Column("fixed_version", String(256), nullable=False),
    PrimaryKeyConstraint("image_digest", "vuln_id", "package", "version"),
    Index("image_vuln_id", "vuln_id"),
)

# Workloads the admission webhook has seen (revision 0004): one row per (cluster,
# namespace, kind, name), updated by each admission review of it, removed by a DELETE.
kube_workload = Table(
    "kube_workload", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("cluster", String(253), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("name", String(253), nullable=False),
    Column("uid", String(64), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    # revision 0009: the tenant of the admission token that reported it
    Column("tenant", String(128), nullable=False, server_default="default"),
    UniqueConstraint("tenant", "cluster", "namespace", "kind", "name",
                     name="uq_kube_workload"),
)

# The containers of each workload at its last review, with the image's digest and the
# verdict the webhook decided on.
kube_workload_image = Table(
    "kube_workload_image", metadata,
    Column("workload_id", BigId, nullable=False),
    Column("container_type", String(16), nullable=False),
    Column("container", String(253), nullable=False),
    Column("image", Text, nullable=False),
    Column("digest", String(128), nullable=False),
    Column("verdict", String(32), nullable=False),
    Column("reasons", Text, nullable=False),
    PrimaryKeyConstraint("workload_id", "container_type", "container"),
    Index("kube_workload_image_digest", "digest"),
)

# Which tenant brought in which image (revision 0009): a scan job it queued (or its
# registries' and images' schedules queued) that found the digest, an admission review of
# its clusters. Verdicts and findings are stored once per digest and shown to a tenant
# only for its digests: a tenant never learns that another tenant has an image.
image_tenant = Table(
    "image_tenant", metadata,
    Column("tenant", String(128), nullable=False),
    Column("image_digest", String(128), nullable=False),
    Column("first_seen", Float, nullable=False),
    PrimaryKeyConstraint("tenant", "image_digest"),
    Index("image_tenant_digest", "image_digest"),
)

# What an image's last scan found besides vulnerabilities, for the console (revision 0011):
# ``findings`` is JSON {"secrets": [{rule, title, severity, path, line, layer,
# deleted_later}], "malware": [{rule, path, layer, sha256, severity, deleted_later}]}
# (never a secret's matched text, not even masked: the worker does not send it), their
# counts (``secrets``, ``malware``: the images list reads no JSON), ``sbom``
# the image's CycloneDX JSON ('' when too large to keep). Replaced by each verdict written
# with a report.
image_report = Table(
    "image_report", metadata,
    Column("image_digest", String(128), primary_key=True),
    Column("findings", Text, nullable=False),
    Column("secrets", Integer, nullable=False),     # how many, for the images list
    Column("malware", Integer, nullable=False),
    Column("sbom", Text, nullable=False),
    Column("created", Float, nullable=False),
)

SCANNER_TABLES = frozenset({
    "scanstore_meta", "vuln_advisory", "vuln_alias", "vuln_affected", "vuln_import",
    "scan_layer_cache", "scan_job", "image_verdict", "scan_registry", "scan_image",
    "image_vuln", "kube_workload", "kube_workload_image", "image_tenant", "image_report"})
