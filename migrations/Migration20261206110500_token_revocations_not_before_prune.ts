import { Migration } from '@mikro-orm/migrations';

/**
 * Not-before revocations were never pruned, so the list every API process loads only grew (ADR 0018).
 * The prune policy now also admits a not-before row older than the token age the pruning transaction
 * declares in app.token_max_age (JWT_MAX_TOKEN_LIFETIME plus the clock tolerance, which the verifier
 * enforces): unset, as for any other caller, no not-before row is admitted.
 */
export class Migration20261206110500_token_revocations_not_before_prune extends Migration {

  override name = 'Migration20261206110500_token_revocations_not_before_prune';

  override up(): void | Promise<void> {
    this.addSql(`drop policy "token_revocations_system_prune" on "token_revocations";`);

    this.addSql(`create policy "token_revocations_system_prune" on "token_revocations" for delete to "dealix_system" using (expires_at < now() or not_before < now() - nullif(current_setting('app.token_max_age', true), '')::interval);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop policy "token_revocations_system_prune" on "token_revocations";`);

    this.addSql(`create policy "token_revocations_system_prune" on "token_revocations" for delete to "dealix_system" using (expires_at < now());`);
  }

}
