import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStep } from '../../platform/durable/workflow.ts';
import { dossierSchema, submissionSchema, type Dossier, RISK_FLAGS } from './golden-path.schemas.ts';
import { PartnerDossierRow } from './golden-path.entities.ts';
import { provenance } from './provenance.ts';
import { insertRow } from '../../platform/db/insert-row.ts';

const HIGH_RISK_SECTORS = new Set(['gambling', 'crypto', 'arms', 'weapons', 'tobacco']);

/** Pure: the normalised partner profile and derived facts, produced at `producedAt` (the database's time, ctx.now). */
export function buildDossier(submission: z.infer<typeof submissionSchema>, producedAt: Date): Dossier {
  const partner = submission.partner;
  const flags: Array<(typeof RISK_FLAGS)[number]> = [];
  if (!partner.registration_number) flags.push('missing_registration_number');
  if (!partner.website) flags.push('missing_website');
  else if (!/^https:\/\//i.test(partner.website)) flags.push('non_https_website');
  if (HIGH_RISK_SECTORS.has(partner.sector.toLowerCase())) flags.push('high_risk_sector');
  const fields = [partner.name, partner.country, partner.sector, partner.website, partner.registration_number];
  const completeness = fields.filter((f) => f !== undefined && f !== '').length / fields.length;
  return {
    profile: {
      name: partner.name.replace(/\s+/g, ' '),
      country: partner.country,
      sector: partner.sector.toLowerCase(),
      website: partner.website ?? null,
      registration_number: partner.registration_number ?? null,
      provenance: provenance('submission', 'normalise-partner-profile', partner, producedAt),
    },
    facts: {
      completeness_score: Math.round(completeness * 100) / 100,
      risk_flags: flags,
      provenance: provenance('derived', 'completeness-and-risk-rules@1', partner, producedAt),
    },
  };
}

export const partnerDossierStep = defineStep({
  name: 'partner-dossier',
  input: z.object({ submission: submissionSchema }),
  output: dossierSchema,
  retry: { attempts: 5, backoffMs: 500, jitter: 0.5 },
  // Pure, plus one insert in its transaction: it may run from what a new run's job carries (ADR 0004).
  effectsInTransaction: true,
  async run({ submission }, ctx) {
    // Stamped with the database's time, never this worker's clock (ctx.now): the row and the provenance alike.
    const dossier = buildDossier(submission, ctx.now);
    await insertRow(ctx.em, PartnerDossierRow, {
      id: randomUUID(),
      tenantId: ctx.run.tenantId,
      runId: ctx.run.id,
      partnerName: dossier.profile.name,
      country: dossier.profile.country,
      completenessScore: dossier.facts.completeness_score,
      content: dossier,
      createdAt: ctx.now,
    });
    return dossier;
  },
});
