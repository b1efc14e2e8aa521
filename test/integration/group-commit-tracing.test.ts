import { afterAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { context, ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { startStack } from '../helpers/stack.ts';
import { GroupCommit } from '../../src/platform/db/group-commit.ts';
import { LAST_IN_TRANSACTION } from '../../src/platform/db/coalescing-client.ts';
import { inlineStatement, type Statement } from '../../src/platform/db/statement-batch.ts';
import { CorrelationSpanProcessor } from '../../src/platform/telemetry/correlation-span-processor.ts';
import { requestContext } from '../../src/platform/tenancy/request-context.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';

/**
 * Group commit (ADR 0007) sends several tenants' transactions as one, on one connection: the database
 * span of that send must not land in one member's trace, tagged with its tenant, carrying the others'
 * statements. Real PostgreSQL as the application role; spans as the pg instrumentation makes them (in
 * the context active when the query is sent, only inside a trace) and tagged by the platform's
 * correlation processor, exported to memory.
 */
const stack = await startStack({ api: false });
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const exporter = new InMemorySpanExporter();
const provider = new TracerProvider({ spanProcessors: [new CorrelationSpanProcessor(), new SimpleSpanProcessor({ exporter })] });
const pgTracer = provider.getTracer('@opentelemetry/instrumentation-pg');
const clients: pg.Client[] = [];
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end()));
  context.disable();
  await stack.stop();
});

const RUN_INSERT = `${LAST_IN_TRANSACTION}insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
   values ($1, $2, 'golden-path', 1, $3, 'pending', 'u', '{}', 'c', 0, 4, now(), now()) returning id`;
/** The tenants whose `set_config` a message carries, as the span's attribute records them. */
const TENANTS = 'test.statement_tenants';

interface Member {
  tenant: string;
  /** The member's own trace: its request's root span. */
  root: ReturnType<typeof pgTracer.startSpan>;
  client: pg.Client;
}

async function member(): Promise<Member> {
  const client = new pg.Client({ connectionString: stack.db.appUrl });
  await client.connect();
  clients.push(client);
  const tenant = randomUUID();
  return { tenant, client, root: provider.getTracer('test').startSpan(`request ${tenant}`) };
}

/** Sends `statements` on the member's connection, recorded as @opentelemetry/instrumentation-pg records a query (requireParentSpan: only inside a trace). */
async function instrumentedSend(m: Member, statements: Statement[], gate?: Promise<void>): Promise<pg.QueryResult[]> {
  await gate;
  const span = trace.getSpan(context.active())
    ? pgTracer.startSpan('pg.query', { kind: SpanKind.CLIENT, attributes: { [TENANTS]: statements.filter((s) => s.text.startsWith('select set_config')).map((s) => String(s.values![1])) } })
    : undefined;
  try {
    const r = await m.client.query(statements.map(inlineStatement).join(';\n'));
    return (Array.isArray(r) ? r : [r]) as pg.QueryResult[];
  } finally {
    span?.end();
  }
}

/** Submits the member's transaction from its own request: its trace active, its tenant in the request context. */
function submit(gc: GroupCommit, m: Member, gate?: Promise<void>): Promise<pg.QueryResult[]> {
  const statements: Statement[] = [
    { text: 'begin' },
    { text: 'select set_config($1, $2, true)', values: ['app.tenant_id', m.tenant] },
    { text: RUN_INSERT, values: [randomUUID(), m.tenant, randomUUID()] },
    { text: 'commit' },
  ];
  const principal = { sub: 'u', tenantId: m.tenant, roles: [] };
  return requestContext.run({ requestId: randomUUID(), correlationId: `c-${m.tenant}`, principal }, () =>
    context.with(trace.setSpan(ROOT_CONTEXT, m.root), () => gc.submit({ statements, send: (st) => instrumentedSend(m, st, gate) })),
  );
}

/** Every recorded query whose trace, tenant attribute or statements mix tenants. */
function mixed(members: Member[], spans: ReadableSpan[]): string[] {
  const tenantOfTrace = new Map(members.map((m) => [m.root.spanContext().traceId, m.tenant]));
  return spans
    .filter((s) => s.attributes[TENANTS] !== undefined)
    .filter((s) => {
      const owner = tenantOfTrace.get(s.spanContext().traceId);
      const statementTenants = s.attributes[TENANTS] as string[];
      return statementTenants.some((t) => t !== owner) || s.attributes[ATTR.TENANT] !== owner;
    })
    .map((s) => `trace of ${tenantOfTrace.get(s.spanContext().traceId)}, tagged ${String(s.attributes[ATTR.TENANT])}, statements of ${(s.attributes[TENANTS] as string[]).join(' + ')}`);
}

describe('group commit and tracing', () => {
  it("no tenant's trace records another tenant's statements: a group's send, or a member sent alone behind another's", async () => {
    for (const queuedBehind of [2, 1]) {
      exporter.reset();
      const gc = new GroupCommit({ maxInFlight: 1, maxMembers: 16 });
      const members = await Promise.all(Array.from({ length: queuedBehind + 1 }, member));
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      // The first holds the only slot until released; the others queue behind it, and go (grouped, or the one alone) when it is back.
      const first = submit(gc, members[0]!, gate);
      const others = members.slice(1).map((m) => submit(gc, m));
      expect(gc.queued).toBe(queuedBehind);
      release();
      await Promise.all([first, ...others]);
      expect(gc.stats.grouped).toBe(queuedBehind > 1 ? 1 : 0);
      const spans = exporter.getFinishedSpans();
      expect(mixed(members, spans)).toEqual([]);
      // A transaction sent alone is still recorded, in its own trace and tenant.
      const own = (m: Member) => spans.filter((s) => s.attributes[TENANTS] !== undefined && s.spanContext().traceId === m.root.spanContext().traceId).length;
      expect(own(members[0]!)).toBe(1);
      if (queuedBehind === 1) expect(own(members[1]!)).toBe(1);
    }
  });
});
