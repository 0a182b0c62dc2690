"""The store's unit tests again, against a real PostgreSQL (Debian's postgresql package)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from moray.api.imageverdicts import VERDICTS_NAME
from moray.controlplane.server.imagelist import ImageListSource
from moray.controlplane.server.pki import PolicyKey
from moray.controlplane.server.watch import PolicyWatcher, libpq_url
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.scanstore import ScanStore
from tests.helpers.postgres import create_database
from tests.unit.controlplane.conftest import FakeSigner, signer, store  # noqa: F401
from tests.unit.controlplane.test_cpevents import (  # noqa: F401
    test_ancestry_ends_on_cycles_and_at_the_bound,
    test_ancestry_walks_the_agents_exec_and_fork_events,
    test_filters_come_from_the_payload,
    test_images_by_verdict,
    test_overview_counts,
    test_pages_have_no_gaps_or_duplicates_while_events_arrive,
    test_payload_cannot_pose_as_another_row,
    test_time_window,
)
from tests.unit.controlplane.test_enrollment_tokens import (  # noqa: F401
    test_every_use_is_audited_with_its_token,
    test_expired_multi_use_token_refused,
    test_failed_certificate_spends_no_use,
    test_multi_use_token_enrols_its_uses_and_no_more,
    test_revision_0005_keeps_one_time_tokens_one_time,
    test_unlimited_token_until_revoked,
)
from tests.unit.controlplane.test_imagelist import (  # noqa: F401
    IMAGES,
    M1,
    key,
    test_a_stored_verdict_wakes_the_watcher,
    test_each_tenant_lists_its_own_images,
    test_list_per_tenant_signed_and_verified_by_the_agent,
    test_safety_net_poll_finds_a_verdict_written_elsewhere,
)
from tests.unit.controlplane.test_list_pages import (  # noqa: F401
    test_agent_pages_follow_next_per_tenant,
    test_audit_filters_by_actor_and_action_from_their_indexes,
    test_image_pages_by_reference_with_the_page_counts,
    test_revision_0013_indexes_rows_stored_at_0012,
)
from tests.unit.controlplane.test_scanstore import (  # noqa: F401
    test_exhausted_lease_fails_the_job,
    test_one_active_job_per_key_and_leases,
    test_parallel_claims_take_each_job_once,
    test_registered_registries_and_images,
    test_stale_rescans_are_tried_once_per_generation,
)
from tests.unit.controlplane.test_store import (  # noqa: F401
    test_agent_kind_declared_at_enrolment,
    test_api_tokens_and_roles,
    test_concurrent_writers_store_each_event_once,
    test_enrollment_token_is_one_time,
    test_events_stored_once,
    test_expired_token_refused,
    test_migrations_match_models,
    test_revision_0012_makes_enrolled_agents_agents,
    test_versions_rollback_delete_and_audit,
)
from tests.unit.controlplane.test_store_hostile import (  # noqa: F401
    test_bad_acks_are_refused_one_by_one,
    test_event_ids_are_unique_per_agent,
    test_nothing_stored_for_revoked_or_unknown_agents,
    test_revision_0003_keeps_events_and_frees_ids_per_agent,
    test_stored_payload_that_is_not_json_does_not_break_reading,
)
from tests.unit.controlplane.test_tenants import (  # noqa: F401
    test_distribution_is_all_or_nothing,
    test_objects_of_another_tenant_are_not_found,
    test_registered_tokens_need_a_registered_tenant,
    test_registry_create_list_delete,
)
from tests.unit.controlplane.test_users import (  # noqa: F401
    clock,
    test_every_change_of_a_user_ends_its_sessions,
    test_login_checks,
    test_rehash_when_parameters_change,
    test_session_idle_and_absolute_expiry,
    users,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_base: str) -> Iterator[Engine]:
    eng = db.make_engine(db.database_url(create_database(pg_base)))
    db.migrate(eng)
    yield eng
    eng.dispose()


def test_a_verdict_stored_by_another_process_is_heard(engine: Engine,
                                                      key: PolicyKey) -> None:  # noqa: F811
    """PostgreSQL: a verdict stored through another store object (another server process,
    no poke) reaches the watcher by its ``verdicts`` notification, not by the poll."""
    cp = ControlPlaneStore(engine)
    cp.apply_policy("t1", "gate", IMAGES, author="a", signer=FakeSigner())

    async def main() -> None:
        watcher = PolicyWatcher(cp, listen_url=libpq_url(engine.url), poll_seconds=3600,
                                extra=ImageListSource(ScanStore(engine), key))
        await watcher.start()
        deadline = asyncio.get_running_loop().time() + 10
        while not watcher.listening:
            assert asyncio.get_running_loop().time() < deadline, "not listening"
            await asyncio.sleep(0.01)
        assert watcher.snapshot.tenant("t1")[VERDICTS_NAME].version == 1
        await asyncio.to_thread(ScanStore(engine).record_verdict, M1, "r/app:1", "s", True, [])
        while watcher.snapshot.tenant("t1")[VERDICTS_NAME].version != 2:
            assert asyncio.get_running_loop().time() < deadline, "notification not heard"
            await asyncio.sleep(0.01)
        await watcher.stop()

    asyncio.run(main())
