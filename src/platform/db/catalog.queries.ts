/**
 * The catalog queries behind catalog.ts. All read pg_catalog only (readable by any role), take
 * `$1` = schema unless noted, and return plain rows; the checks live in catalog.ts.
 */
const columnsOf = (rel: string, keys: string, limit = '') => `array(
  select coalesce(a.attname::text, '(expression)')
    from unnest(${keys}::int2[]) with ordinality k(attnum, ord)
    left join pg_attribute a on a.attrelid = ${rel} and a.attnum = k.attnum and k.attnum <> 0
   ${limit ? `where k.ord <= ${limit}` : ''}
   order by k.ord)`;

export const CATALOG_SQL = {
  tables: `
    select c.relname as table, c.relrowsecurity as rls_enabled, c.relforcerowsecurity as rls_forced,
           exists (select 1 from pg_attribute a
                    where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped) as has_tenant_id
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = $1 and c.relkind in ('r', 'p')`,

  policies: `
    select tablename as table, policyname as name, permissive, roles::text[] as roles, cmd, qual, with_check
      from pg_policies where schemaname = $1 order by tablename, policyname`,

  /** Key columns only (INCLUDE columns do not take part in uniqueness), expressions as '(expression)'. */
  indexes: `
    select c.relname as table, i.relname as index, x.indisunique as unique, x.indisprimary as primary,
           x.indpred is not null as partial, x.indisvalid as valid, con.conname as constraint,
           ${columnsOf('x.indrelid', 'x.indkey', 'x.indnkeyatts')} as columns
      from pg_index x
      join pg_class c on c.oid = x.indrelid
      join pg_class i on i.oid = x.indexrelid
      join pg_namespace n on n.oid = c.relnamespace
      left join pg_constraint con on con.conindid = x.indexrelid and con.conrelid = x.indrelid and con.contype in ('u', 'p')
     where n.nspname = $1`,

  foreignKeys: `
    select con.conname as name, c.relname as table, f.relname as ref_table,
           ${columnsOf('con.conrelid', 'con.conkey')} as columns,
           ${columnsOf('con.confrelid', 'con.confkey')} as ref_columns
      from pg_constraint con
      join pg_class c on c.oid = con.conrelid
      join pg_class f on f.oid = con.confrelid
      join pg_namespace n on n.oid = c.relnamespace
     where con.contype = 'f' and n.nspname = $1`,

  /**
   * $2 = the application role. Columns that draw from a sequence (identity, or a `nextval()` default),
   * with their table; and the sequences the role may use itself (`sequence`).
   */
  sequences: `
    select c.relname as table, a.attname as column, null::text as sequence
      from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
      left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
     where n.nspname = $1 and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
       and (a.attidentity <> '' or pg_get_expr(d.adbin, d.adrelid) like '%nextval(%')
    union all
    select null, null, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = $1 and case when c.relkind = 'S' then has_sequence_privilege($2, c.oid, 'USAGE, SELECT, UPDATE') else false end`,

  /**
   * $2 = the application role. Rewrite rules (a view's own `_RETURN` aside) on a relation it may write:
   * a rule has no owner of its own, and its actions run with the rights of its relation's owner.
   */
  rules: `
    select r.rulename as rule, c.relname as table
      from pg_rewrite r join pg_class c on c.oid = r.ev_class join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = $1 and r.rulename <> '_RETURN' and has_table_privilege($2, c.oid, 'INSERT, UPDATE, DELETE')`,

  /** $2 = the application role. Materialized views have no RLS at all, so they never count as invoker. */
  views: `
    select c.relname as name,
           c.relkind = 'v' and coalesce((select lower(option_value) in ('true', 'on', '1', 'yes')
                                           from pg_options_to_table(c.reloptions) where option_name = 'security_invoker'), false) as security_invoker,
           has_table_privilege($2, c.oid, 'SELECT') as readable
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = $1 and c.relkind in ('v', 'm')`,

  /**
   * $2 = the application role. A SECURITY DEFINER function it may call, or one a trigger runs on a
   * table it may write: a trigger's function runs whatever EXECUTE says (PostgreSQL checks that when
   * the trigger is created, never when it fires), so revoking EXECUTE from PUBLIC does not keep the
   * application's writes from running it as its owner. `triggers`: the tables whose triggers run it. A trigger's
   * function counts in whatever schema it is kept: the trigger needs no USAGE of that schema (role-schema) to run it.
   */
  securityDefiners: `
    select p.oid::regprocedure::text as name, pg_get_userbyid(p.proowner) as owner,
           coalesce(array_agg(distinct t.tgrelid::regclass::text) filter (where t.oid is not null), '{}') as triggers
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
      left join pg_trigger t on t.tgfoid = p.oid and not t.tgisinternal and has_table_privilege($2, t.tgrelid, 'INSERT, UPDATE, DELETE')
     where p.prosecdef and (n.nspname = $1 or t.oid is not null)
     group by p.oid
    having has_function_privilege($2, p.oid, 'EXECUTE') or count(t.oid) > 0`,

  /** $1 = role. */
  role: `select rolname, rolsuper, rolbypassrls, rolcanlogin, rolinherit, rolreplication, rolcreaterole, rolcreatedb from pg_roles where rolname = $1`,

  /**
   * $2 = role: the schemas besides $1 (and PostgreSQL's own: pg_catalog, information_schema, TOAST and temporary
   * schemas) it may create in, or use (USAGE, its own or PUBLIC's) to reach something: a relation it holds a
   * privilege on, or a function it may execute (`objects`, at most five named). The checks read schema $1 alone,
   * so a view, function or table elsewhere that the role can reach would go unseen. An extension's own objects
   * do not count (a provider's extension schema, such as Heroku's heroku_ext, which PUBLIC may use), nor does a
   * schema the role may use but reaches nothing in: the next inspection sees what is added there.
   */
  otherSchemas: `
    with ns as (
      select oid, nspname from pg_namespace
       where nspname <> $1 and nspname not in ('pg_catalog', 'information_schema') and nspname !~ '^pg_(toast|temp_|toast_temp_)'
         and (has_schema_privilege($2, oid, 'USAGE') or has_schema_privilege($2, oid, 'CREATE'))),
    reach as (
      select c.relnamespace as nsp,
             case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
                            when 'f' then 'foreign table' else 'table' end || ' ' || c.oid::regclass::text as object
        from pg_class c
       where c.relnamespace in (select oid from ns) and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
         and case when c.relkind = 'S' then has_sequence_privilege($2, c.oid, 'USAGE, SELECT, UPDATE')
                  else has_table_privilege($2, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                       or has_any_column_privilege($2, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES') end
         and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
      union all
      select p.pronamespace, 'function ' || p.oid::regprocedure::text
        from pg_proc p
       where p.pronamespace in (select oid from ns) and has_function_privilege($2, p.oid, 'EXECUTE')
         and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e'))
    select ns.nspname as schema, has_schema_privilege($2, ns.oid, 'CREATE') as "create",
           coalesce((select array_agg(object order by object) from (select object from reach where nsp = ns.oid order by object limit 5) o), '{}') as objects
      from ns
     where has_schema_privilege($2, ns.oid, 'CREATE')
        or has_schema_privilege($2, ns.oid, 'USAGE') and exists (select 1 from reach where nsp = ns.oid)
     order by 1`,

  /** $1 = role: relations in any user schema, schemas, and this database. */
  owned: `
    select case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
                          when 'f' then 'foreign table' else 'table' end as kind,
           n.nspname || '.' || c.relname as name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relowner = (select oid from pg_roles where rolname = $1)
       and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
       and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp|toast_temp)'
    union all
    select 'schema', nspname from pg_namespace
     where nspowner = (select oid from pg_roles where rolname = $1) and nspname !~ '^pg_(toast|temp|toast_temp)'
    union all
    select 'database', datname from pg_database
     where datname = current_database() and datdba = (select oid from pg_roles where rolname = $1)`,

  /** $2 = role, $3 = comma-separated privileges. Column grants count too (has_any_column_privilege). */
  privileges: `
    select c.relname as table, p.privilege
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      cross join unnest(string_to_array($3, ',')) as p(privilege)
     where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')
       and case when p.privilege in ('TRUNCATE', 'TRIGGER', 'DELETE') then has_table_privilege($2, c.oid, p.privilege)
                else has_any_column_privilege($2, c.oid, p.privilege) end
     order by 1, 2`,

  /**
   * $2 = role: the row privileges it holds on tables without a tenant_id column — rows row-level
   * security cannot scope to a tenant (column grants count too; PUBLIC's grants are the role's).
   */
  untenantedPrivileges: `
    select c.relname as table, p.privilege
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) as p(privilege)
     where n.nspname = $1 and c.relkind in ('r', 'p', 'f')
       and not exists (select 1 from pg_attribute a
                        where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
       and case when p.privilege = 'DELETE' then has_table_privilege($2, c.oid, p.privilege)
                else has_any_column_privilege($2, c.oid, p.privilege) end
     order by 1, 2`,

  /**
   * $2 = role, $3 = comma-separated table names: per column of each table with tenant_id and of each table
   * named (which may lack it), whether the role may SELECT, INSERT or UPDATE it, and DELETE from its
   * table (a table-wide grant counts for every column; PUBLIC's grants and inherited ones are the role's).
   * catalog.ts compares them with what roles.ts grants (appTableGrant, systemTableGrant), both ways.
   */
  columnPrivileges: `
    select c.relname as table, a.attname as column, t.attnum is not null as tenanted,
           has_column_privilege($2, c.oid, a.attnum, 'SELECT') as select,
           has_column_privilege($2, c.oid, a.attnum, 'INSERT') as insert,
           has_column_privilege($2, c.oid, a.attnum, 'UPDATE') as update,
           has_table_privilege($2, c.oid, 'DELETE') as delete
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
      left join pg_attribute t on t.attrelid = c.oid and t.attname = 'tenant_id' and t.attnum > 0 and not t.attisdropped
     where n.nspname = $1 and c.relkind in ('r', 'p') and (t.attnum is not null or c.relname = any(string_to_array($3, ',')))
     order by 1, a.attnum`,

  /**
   * Every function of the schema written in a language whose body resolves names (not C or internal, not
   * an extension's): whether it is a trigger function or SECURITY DEFINER, and the search_path it runs
   * with (its `SET search_path` clause, from proconfig; null when it has none and runs with its caller's).
   */
  functionSearchPaths: `
    select p.oid::regprocedure::text as name, p.prorettype = 'trigger'::regtype as trigger, p.prosecdef as definer,
           (select substr(c, length('search_path=') + 1) from unnest(p.proconfig) c where c like 'search\\_path=%') as search_path
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
     where n.nspname = $1 and l.lanname not in ('c', 'internal')
       and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
     order by 1`,

  /** $2 = role. */
  create: `
    select 'schema ' || $1::text as target where has_schema_privilege($2, $1, 'CREATE')
    union all
    select 'database ' || current_database() where has_database_privilege($2, current_database(), 'CREATE')`,

  /**
   * $1 = role: may it create temporary tables in this database? PUBLIC holds TEMP on every database
   * CREATE DATABASE makes, until revoked (db:setup revokes it); pg_temp comes first in every search_path.
   */
  temp: `select current_database() as database where has_database_privilege($1, current_database(), 'TEMP')`,

  /** $1 = role: the roles whose privileges it holds without SET ROLE (inherited, directly or not). */
  inheritsFrom: `
    select rolname from pg_roles r
     where r.rolname <> $1 and pg_has_role($1, r.oid, 'USAGE') and exists (select 1 from pg_auth_members m where m.roleid = r.oid)
     order by 1`,

  /** $1 = role: every role it is a member of, directly or not (each reachable with SET ROLE). */
  memberOf: `
    with recursive r(oid) as (
      select m.roleid from pg_auth_members m join pg_roles me on me.oid = m.member where me.rolname = $1
      union
      select m.roleid from pg_auth_members m join r on m.member = r.oid)
    select rolname from pg_roles where oid in (select oid from r) order by 1`,
} as const;
