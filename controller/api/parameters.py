"""The Postgres settings a spec may set (`spec.postgres.parameters`): an allowlist, not a denylist.

A spec author is not trusted with the server: a setting that runs a command (`archive_command`),
loads a library (`*_preload_libraries` beyond a named list), writes or reads files where it likes
(`log_directory`, `external_pid_file`, `include_dir`), or changes how the server is reached or
authenticated (`listen_addresses`, `hba_file`, `ssl`) is refused. What remains is documented, safe
and local to the database: the planner, timeouts, logging verbosity, vacuum and checkpoints, client
defaults, and the settings of a few extensions the operator knows.

The CRD's CEL rule carries the same lists; a test keeps them equal.
"""

from __future__ import annotations

PRELOADABLE = ("auto_explain", "pg_prewarm", "pg_stat_statements")
"""Libraries `shared_preload_libraries` may name: extensions shipped with Postgres, read-only to the host."""

ALLOWED = frozenset(
    {
        # the planner
        "constraint_exclusion",
        "cpu_index_tuple_cost",
        "cpu_operator_cost",
        "cpu_tuple_cost",
        "cursor_tuple_fraction",
        "default_statistics_target",
        "effective_io_concurrency",
        "enable_async_append",
        "enable_bitmapscan",
        "enable_gathermerge",
        "enable_hashagg",
        "enable_hashjoin",
        "enable_incremental_sort",
        "enable_indexonlyscan",
        "enable_indexscan",
        "enable_material",
        "enable_memoize",
        "enable_mergejoin",
        "enable_nestloop",
        "enable_parallel_append",
        "enable_parallel_hash",
        "enable_partition_pruning",
        "enable_partitionwise_aggregate",
        "enable_partitionwise_join",
        "enable_seqscan",
        "enable_sort",
        "enable_tidscan",
        "from_collapse_limit",
        "geqo",
        "geqo_threshold",
        "hash_mem_multiplier",
        "jit",
        "jit_above_cost",
        "jit_inline_above_cost",
        "jit_optimize_above_cost",
        "join_collapse_limit",
        "maintenance_io_concurrency",
        "min_parallel_index_scan_size",
        "min_parallel_table_scan_size",
        "parallel_setup_cost",
        "parallel_tuple_cost",
        "plan_cache_mode",
        "random_page_cost",
        "seq_page_cost",
        # timeouts and locks
        "deadlock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "lock_timeout",
        "max_locks_per_transaction",
        "max_pred_locks_per_transaction",
        "statement_timeout",
        "tcp_keepalives_count",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "temp_file_limit",
        # logging verbosity (where logs go is the operator's)
        "log_autovacuum_min_duration",
        "log_checkpoints",
        "log_connections",
        "log_disconnections",
        "log_duration",
        "log_error_verbosity",
        "log_lock_waits",
        "log_min_duration_sample",
        "log_min_duration_statement",
        "log_min_error_statement",
        "log_min_messages",
        "log_parameter_max_length",
        "log_parameter_max_length_on_error",
        "log_statement",
        "log_statement_sample_rate",
        "log_temp_files",
        "log_transaction_sample_rate",
        "track_activity_query_size",
        "track_functions",
        "track_io_timing",
        # vacuum, checkpoints and the write-ahead log's pace
        "autovacuum",
        "autovacuum_analyze_scale_factor",
        "autovacuum_analyze_threshold",
        "autovacuum_naptime",
        "autovacuum_vacuum_cost_delay",
        "autovacuum_vacuum_cost_limit",
        "autovacuum_vacuum_insert_scale_factor",
        "autovacuum_vacuum_insert_threshold",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_threshold",
        "checkpoint_completion_target",
        "checkpoint_timeout",
        "commit_delay",
        "commit_siblings",
        "max_wal_size",
        "min_wal_size",
        "synchronous_commit",
        "vacuum_cost_delay",
        "vacuum_cost_limit",
        "wal_compression",
        # client defaults
        "bytea_output",
        "datestyle",
        "default_text_search_config",
        "default_toast_compression",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "extra_float_digits",
        "gin_pending_list_limit",
        "intervalstyle",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "search_path",
        "temp_buffers",
        "timezone",
        # extensions from PRELOADABLE, and their settings
        "shared_preload_libraries",
        "auto_explain.log_analyze",
        "auto_explain.log_buffers",
        "auto_explain.log_format",
        "auto_explain.log_min_duration",
        "auto_explain.log_nested_statements",
        "auto_explain.log_timing",
        "auto_explain.log_verbose",
        "auto_explain.sample_rate",
        "pg_prewarm.autoprewarm",
        "pg_prewarm.autoprewarm_interval",
        "pg_stat_statements.max",
        "pg_stat_statements.save",
        "pg_stat_statements.track",
        "pg_stat_statements.track_planning",
        "pg_stat_statements.track_utility",
    }
)

MAX_PARAMETERS = 64
MAX_VALUE_LENGTH = 1024


def preload_problem(value: str) -> str | None:
    """Why a `shared_preload_libraries` value is refused, or None: only PRELOADABLE names, by name."""
    names = [n.strip().strip('"') for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRELOADABLE]
    if unknown:
        return f"may only name {', '.join(PRELOADABLE)} (got {', '.join(repr(n) for n in unknown)})"
    return None
