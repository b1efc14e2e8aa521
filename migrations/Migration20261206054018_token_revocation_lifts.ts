import { Migration } from '@mikro-orm/migrations';

export class Migration20261206054018_token_revocation_lifts extends Migration {

  override name = 'Migration20261206054018_token_revocation_lifts';

  override up(): void | Promise<void> {
    this.addSql(`alter table "token_revocations" add "lifted_at" timestamptz null, add "lifted_by" varchar(255) null;`);
    this.addSql(`alter table "token_revocations" add constraint "token_revocations_lifted_by_whom" check ((lifted_at is null) = (lifted_by is null));`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "token_revocations" drop constraint "token_revocations_lifted_by_whom";`);
    this.addSql(`alter table "token_revocations" drop column "lifted_at", drop column "lifted_by";`);
  }

}
