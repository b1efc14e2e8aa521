import { Migration } from '@mikro-orm/migrations';

/**
 * A retry keeps the failure it clears (ADR 0001, amendment "A retry keeps its failure"): the trigger
 * `ended_is_history` let a failed run move back to pending or running with any other change, so
 * `set status = 'running', error = null, retry_history = null, retry_count = 0` erased its failure, and a
 * second statement could then complete it with any output. The move is now let through only as
 * runtime.retry makes it: retry_count one up; retry_history the old one with one entry appended — the new
 * retry_count and the run's error — the newest 20 kept (RUN_RETRY_HISTORY_MAX); no output, error or end.
 * The function is replaced in place (the trigger is unchanged), keeping its fixed search_path
 * (Migration20261206081500_trigger_functions_search_path): the schema generator's drop and create of the
 * trigger would lose it. Down restores the body before, with the same search_path.
 */
export class Migration20261206083116_retry_keeps_its_failure extends Migration {

  override name = 'Migration20261206083116_retry_keeps_its_failure';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "durable_runs_ended_is_history_fn"() returns trigger as \$\$ begin if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; if old.status = 'failed' and new.status in ('pending', 'running') then if new.retry_count = old.retry_count + 1 and new.output is null and new.error is null and new.completed_at is null and new.retry_history -> -1 -> 'retry' = to_jsonb(new.retry_count) and new.retry_history -> -1 -> 'error' = coalesce(old.error, 'null'::jsonb) and new.retry_history = jsonb_path_query_array(coalesce(old.retry_history, '[]'::jsonb) || jsonb_build_array(new.retry_history -> -1), '\$[last - 19 to last]') then return new; end if; raise exception 'run % failed: a retry raises retry_count by one and appends the failure it clears to retry_history, and writes no output', old.id using errcode = 'insufficient_privilege'; end if; raise exception 'run % has ended (%): an ended run is never updated, but a failed one retried', old.id, old.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`create or replace function "durable_runs_ended_is_history_fn"() returns trigger as \$\$ begin if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; if old.status = 'failed' and new.status in ('pending', 'running') then return new; end if; raise exception 'run % has ended (%): an ended run is never updated, but a failed one retried', old.id, old.status using errcode = 'insufficient_privilege'; end; \$\$ language plpgsql set search_path = pg_catalog, public, pg_temp;`);
  }

}
