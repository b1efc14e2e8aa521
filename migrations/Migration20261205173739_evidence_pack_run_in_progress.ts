import { Migration } from '@mikro-orm/migrations';

/**
 * The seal trigger also refuses (DX001, as durable_expect's "run no longer active": a run cancelled between
 * its evidence step's read and the pack's insert takes the executor's usual path) a pack for a run of its tenant
 * that is not pending or running: the evidence step writes its pack in its own transaction, while its
 * run is running (or pending: a failed run retried at that step), so a pack for a run waiting for its
 * approvers, or for one that ended without a pack, is one the application role wrote by hand. The run is
 * read by its key as before (`status || ''`: no partial status index); the statuses are read again only
 * to refuse. Packs already written are left as they are (/verify compares them with their run's records:
 * evidence-records.ts). Dropped and created again in the migration's transaction, as the previous version
 * was, so no pack is inserted unsealed meanwhile.
 */

export class Migration20261205173739_evidence_pack_run_in_progress extends Migration {

  override name = 'Migration20261205173739_evidence_pack_run_in_progress';

  override up(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seal" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_seal_fn"();`);
    this.addSql(`create or replace function "evidence_packs_seal_fn"() returns trigger as \$\$ begin if not exists (select from durable_runs where tenant_id = new.tenant_id and id = new.run_id and (status || '') in ('pending', 'running')) then if exists (select from durable_runs where tenant_id = new.tenant_id and id = new.run_id) then raise exception 'evidence pack % names run %, which is %: a pack is written by its run''s evidence step, while the run is pending or running', new.id, new.run_id, (select status from durable_runs where tenant_id = new.tenant_id and id = new.run_id) using errcode = 'DX001'; end if; raise exception 'evidence pack % names run %, which is no run of tenant %', new.id, new.run_id, new.tenant_id using errcode = 'foreign_key_violation'; end if; insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "seal" AFTER INSERT on "evidence_packs" for each ROW execute function "evidence_packs_seal_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seal" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_seal_fn"();`);
    this.addSql(`create or replace function "evidence_packs_seal_fn"() returns trigger as \$\$ begin if not exists (select from durable_runs where tenant_id = new.tenant_id and id = new.run_id) then raise exception 'evidence pack % names run %, which is no run of tenant %', new.id, new.run_id, new.tenant_id using errcode = 'foreign_key_violation'; end if; insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "seal" AFTER INSERT on "evidence_packs" for each ROW execute function "evidence_packs_seal_fn"();`);
  }

}
