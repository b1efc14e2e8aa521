import { Migration } from '@mikro-orm/migrations';

/**
 * Run retention (ADR 0011): the system role may delete ended runs (their checkpoints cascade), and the
 * hash each evidence pack's run recorded moves out of the run's execution state into `evidence_seals`,
 * which `/verify` reads and retention never touches.
 *
 * Packs written before this release get their seal from their run's evidence step checkpoint (its
 * recorded `sha256`, not the pack's own: the seal is the independent record). evidence_packs and
 * durable_checkpoints force row-level security on the owner too, and the tenant setting is unset in a
 * migration: as in Migration20261203134347, the tenants are listed with RLS off for evidence_packs
 * alone (under the ACCESS EXCLUSIVE lock that takes, forced again before the migration commits), and
 * each tenant's seals are written under its own tenant setting, so checkpoints are read, and seals
 * written, through their policies.
 */
export class Migration20261203182756_evidence_seals_run_retention extends Migration {

  override name = 'Migration20261203182756_evidence_seals_run_retention';

  override up(): void | Promise<void> {
    this.addSql(`create table "evidence_seals" ("id" uuid not null, "tenant_id" uuid not null, "run_id" uuid not null, "sha256" varchar(64) not null, "created_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`alter table "evidence_seals" add constraint "evidence_seals_tenant_run_unique" unique ("tenant_id", "run_id");`);

    this.addSql(`create policy "durable_runs_system_retention" on "durable_runs" for delete to "dealix_system" using ((status = ANY (ARRAY['completed'::text, 'failed'::text, 'rejected'::text, 'approval_expired'::text, 'cancelled'::text])));`);

    this.addSql(`alter table "evidence_seals" enable row level security;`);
    this.addSql(`alter table "evidence_seals" force row level security;`);
    this.addSql(`create policy "evidence_seals_tenant_isolation" on "evidence_seals" using ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif"))) with check ((tenant_id = ( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid AS "nullif")));`);

    this.addSql(`alter table "evidence_packs" no force row level security;`);
    this.addSql(`do $$
declare t uuid;
begin
  for t in select distinct tenant_id from evidence_packs loop
    perform set_config('app.tenant_id', t::text, true);
    insert into evidence_seals (id, tenant_id, run_id, sha256, created_at)
    select e.id, e.tenant_id, e.run_id, c.output->>'sha256', e.created_at
      from evidence_packs e
      join durable_checkpoints c on c.tenant_id = e.tenant_id and c.run_id = e.run_id
     where e.tenant_id = t and c.step_name = 'evidence-pack' and c.status = 'completed'
       and c.output->>'evidence_pack_id' = e.id::text and c.output->>'sha256' ~ '^[0-9a-f]{64}$';
  end loop;
  perform set_config('app.tenant_id', '', true);
end $$;`);
    this.addSql(`alter table "evidence_packs" force row level security;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "evidence_seals" cascade;`);

    this.addSql(`drop policy "durable_runs_system_retention" on "durable_runs";`);
  }

}
