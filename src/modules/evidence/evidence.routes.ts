import { z } from 'zod';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { isoTime, toIsoTime } from '../../platform/http/iso-time.ts';
import { evidencePackContentSchema, sha256Schema } from '../golden-path/golden-path.schemas.ts';
import { evidenceVerification, getEvidence, verifyEvidence } from './evidence.service.ts';

const BASE = '/api/v1';
const params = z.object({ id: z.string().uuid() });

const evidencePackView = z
  .strictObject({
    evidence_pack_id: z.uuid(),
    run_id: z.uuid(),
    sha256: sha256Schema.describe('Over the RFC 8785 canonical JSON of content'),
    created_at: isoTime,
    content: evidencePackContentSchema,
    links: z.strictObject({ verify: z.string() }),
  })
  .meta({ id: 'EvidencePack' });
type EvidencePackView = z.infer<typeof evidencePackView>;

export function evidenceRoutes(): RouteDef[] {
  return [
    defineRoute({
      method: 'get',
      path: `${BASE}/evidence/:id`,
      summary: 'An evidence pack: its canonical content and SHA-256',
      tags: ['evidence'],
      params,
      responses: { 200: { description: 'The evidence pack', schema: evidencePackView }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params }) {
        const row = await getEvidence(em, params.id);
        const body: EvidencePackView = {
          evidence_pack_id: row.id,
          run_id: row.runId,
          sha256: row.sha256,
          created_at: toIsoTime(row.createdAt),
          content: row.content,
          links: { verify: `${BASE}/evidence/${row.id}/verify` },
        };
        return { status: 200, body };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/evidence/:id/verify`,
      summary: 'Recompute the SHA-256 over the stored canonical content and compare',
      tags: ['evidence'],
      params,
      responses: { 200: { description: 'Whether the pack is intact', schema: evidenceVerification }, 404: { description: 'Not found for this tenant' } },
      async handler({ em, params }) {
        return { status: 200, body: await verifyEvidence(em, params.id) };
      },
    }),
  ];
}
