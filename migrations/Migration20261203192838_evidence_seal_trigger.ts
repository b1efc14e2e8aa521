import { Migration } from '@mikro-orm/migrations';

/**
 * Every evidence pack is sealed as it is inserted, by a trigger (ADR 0011): the evidence step no longer
 * writes the seal itself, so a pack written by a release that knows nothing of seals — a worker not yet
 * rolled when this release migrates, or the previous build redeployed as a rollback — is sealed too.
 * Without it such a pack had no seal: `/verify` answered `valid: false` for an intact pack at once, and
 * after run retention deleted its run's checkpoints nothing recorded its hash any more.
 * The function runs as the inserting role (SECURITY INVOKER), under the seal's RLS policy.
 */

export class Migration20261203192838_evidence_seal_trigger extends Migration {

  override name = 'Migration20261203192838_evidence_seal_trigger';

  override up(): void | Promise<void> {
    this.addSql(`create or replace function "evidence_packs_seal_fn"() returns trigger as \$\$ begin insert into evidence_seals (id, tenant_id, run_id, sha256, created_at) values (new.id, new.tenant_id, new.run_id, new.sha256, new.created_at); return null; end; \$\$ language plpgsql;`);
    this.addSql(`create trigger "seal" AFTER INSERT on "evidence_packs" for each ROW execute function "evidence_packs_seal_fn"();`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop trigger if exists "seal" on "evidence_packs";`);
    this.addSql(`drop function if exists "evidence_packs_seal_fn"();`);
  }

}
