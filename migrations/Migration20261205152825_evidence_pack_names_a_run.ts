import { Migration } from '@mikro-orm/migrations';

/**
 * The seal trigger also refuses a pack whose (tenant, run) names no run of the database (23503): the
 * application role may insert packs, and could write a self-consistent one (content, hash, its seal) for
 * a made-up run id, or under another tenant for that tenant's run. A check at insert, not a foreign key:
 * run retention deletes ended runs and keeps their packs (ADR 0011). Packs already written are left as
 * they are (a run deleted by retention cannot be told from one that never was). Dropped and created
 * again in the migration's transaction, so no pack is inserted unsealed meanwhile; the lock is
 * evidence_packs' for that instant.
 */

export class Migration20261205152825_evidence_pack_names_a_run extends Migration {

  override name = 'Migration20261205152825_evidence_pack_names_a_run';

  override up(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seal" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_seal_fn"();`);
    this.addSql(`create or replace function "evidence_packs_seal_fn"() returns trigger as \$\$ begin if not exists (select from durable_runs where tenant_id = new.tenant_id and id = new.run_id) then raise exception 'evidence pack % names run %, which is no run of tenant %', new.id, new.run_id, new.tenant_id using errcode = 'foreign_key_violation'; end if; insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "seal" AFTER INSERT on "evidence_packs" for each ROW execute function "evidence_packs_seal_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seal" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_seal_fn"();`);
    this.addSql(`create or replace function "evidence_packs_seal_fn"() returns trigger as \$\$ begin insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "seal" AFTER INSERT on "evidence_packs" for each ROW execute function "evidence_packs_seal_fn"();`);
  }

}
