"""The store's unit tests again, against a real PostgreSQL (Debian's postgresql package)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from moray.controlplane.store import db
from tests.helpers.postgres import create_database
from tests.unit.controlplane.conftest import signer, store  # noqa: F401
from tests.unit.controlplane.test_enrollment_tokens import (  # noqa: F401
    test_every_use_is_audited_with_its_token,
    test_expired_multi_use_token_refused,
    test_failed_certificate_spends_no_use,
    test_multi_use_token_enrols_its_uses_and_no_more,
    test_revision_0005_keeps_one_time_tokens_one_time,
    test_unlimited_token_until_revoked,
)
from tests.unit.controlplane.test_scanstore import (  # noqa: F401
    test_exhausted_lease_fails_the_job,
    test_one_active_job_per_key_and_leases,
    test_parallel_claims_take_each_job_once,
    test_registered_registries_and_images,
    test_stale_rescans_are_tried_once_per_generation,
)
from tests.unit.controlplane.test_store import (  # noqa: F401
    test_api_tokens_and_roles,
    test_concurrent_writers_store_each_event_once,
    test_enrollment_token_is_one_time,
    test_events_stored_once,
    test_expired_token_refused,
    test_migrations_match_models,
    test_versions_rollback_delete_and_audit,
)
from tests.unit.controlplane.test_store_hostile import (  # noqa: F401
    test_bad_acks_are_refused_one_by_one,
    test_event_ids_are_unique_per_agent,
    test_nothing_stored_for_revoked_or_unknown_agents,
    test_revision_0003_keeps_events_and_frees_ids_per_agent,
    test_stored_payload_that_is_not_json_does_not_break_reading,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_base: str) -> Iterator[Engine]:
    eng = db.make_engine(db.database_url(create_database(pg_base)))
    db.migrate(eng)
    yield eng
    eng.dispose()
