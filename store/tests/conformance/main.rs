//! The store conformance suite: every case runs against SQLite (a temp
//! file) and PostgreSQL (a fresh database on the server named by
//! `MERIDIAN_TEST_POSTGRES_URL`; run through `tests/pg-env.sh`). Without
//! that variable the PostgreSQL tests fail, they are never skipped.

mod cases;
mod harness;
mod postgres;
mod status_cases;
mod watch_cases;

/// Generates one test per case and backend, e.g. `sqlite::compaction`.
macro_rules! conformance {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = crate::harness::Harness::sqlite();
                    crate::$module::$case(&h).await;
                    h.cleanup().await;
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = crate::harness::Harness::postgres().await;
                    crate::$module::$case(&h).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    cases::create_get_already_exists,
    cases::list_paging_and_filters,
    cases::update_and_conflict,
    cases::concurrent_conflicting_updates,
    cases::delete_and_not_found,
    cases::noop_writes_do_not_bump,
    cases::batch_is_atomic,
    cases::odd_input_is_stored_verbatim,
    cases::concurrent_writers_fail_alone,
    cases::concurrent_mixed_writes_agree_with_the_log,
    watch_cases::watch_from_zero_then_live,
    watch_cases::watch_from_midway,
    watch_cases::watch_resume_without_gaps,
    watch_cases::compaction,
    watch_cases::data_persists_across_reconnect,
    watch_cases::concurrent_writers_two_handles,
    status_cases::status_crud_and_expectations,
    status_cases::status_writes_do_not_touch_the_change_feed,
    status_cases::status_is_shared_between_handles,
    status_cases::retention_compaction_then_stale_watcher_resyncs,
    status_cases::compactor_task_bounds_the_log,
    status_cases::upgrade_moves_stored_insights_to_status,
    status_cases::status_batch_writes_each_under_its_expectation,
);
