import { Migration } from '@mikro-orm/migrations';

/**
 * A proposed policy change records the policy in force it was compared with (`base_policy`, ADR 0010):
 * for a change based on the defaults (version 0) those are the defaults with the SLAs configured then,
 * which an operator may change without a new version, so the version alone could not tell that the
 * change would now loosen more than its `loosens`. Changes proposed before have none (null): one of
 * them still pending on the defaults reads superseded from this release on (propose it again). A
 * nullable column: the table is not rewritten, and its row-level security (forced) is untouched.
 */
export class Migration20261203220101_approval_policy_change_base_policy extends Migration {

  override name = 'Migration20261203220101_approval_policy_change_base_policy';

  override up(): void | Promise<void> {
    this.addSql(`alter table "approval_policy_changes" add "base_policy" jsonb null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "approval_policy_changes" drop column "base_policy";`);
  }

}
