import { Migration } from '@mikro-orm/migrations';

/**
 * A revocation with an empty token id or subject (`--sub "$UNSET"`) revoked no token while the command
 * reported success (ADR 0018): the table now refuses one. Such a row written before is not deleted (it is
 * the record of an operator's act) but lifted, as what it always was — in force for no token — so the
 * checks, which exempt lifted rows, hold for every row.
 */
export class Migration20261206081149_token_revocations_not_empty extends Migration {

  override name = 'Migration20261206081149_token_revocations_not_empty';

  override up(): void | Promise<void> {
    this.addSql(`update "token_revocations" set lifted_at = now(), lifted_by = 'migration: empty jti or subject, revoked no token' where lifted_at is null and (jti = '' or subject = '');`);
    this.addSql(`alter table "token_revocations" add constraint "token_revocations_jti_not_empty" check (jti <> '' or lifted_at is not null);`);
    this.addSql(`alter table "token_revocations" add constraint "token_revocations_subject_not_empty" check (subject <> '' or lifted_at is not null);`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "token_revocations" drop constraint "token_revocations_jti_not_empty";`);
    this.addSql(`alter table "token_revocations" drop constraint "token_revocations_subject_not_empty";`);
  }

}
