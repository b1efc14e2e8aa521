import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { getEvidence, verifyEvidence } from './evidence.service.ts';

const BASE = '/api/v1';
const params = z.object({ id: z.string().uuid() });

export function evidenceRoutes(): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: `${BASE}/evidence/:id`,
      summary: 'An evidence pack: its canonical content and SHA-256',
      tags: ['evidence'],
      params,
      responses: { 200: { description: 'The evidence pack' }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params }) {
        const row = await getEvidence(em, params.id);
        return { status: 200, body: { evidence_pack_id: row.id, run_id: row.runId, sha256: row.sha256, created_at: row.createdAt, content: row.content, links: { verify: `${BASE}/evidence/${row.id}/verify` } } };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/evidence/:id/verify`,
      summary: 'Recompute the SHA-256 over the stored canonical content and compare',
      tags: ['evidence'],
      params,
      responses: { 200: { description: '{ valid, sha256 }' }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params }) {
        return { status: 200, body: await verifyEvidence(em, params.id) };
      },
    }),
  ];
}
