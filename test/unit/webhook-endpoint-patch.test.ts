/**
 * The update's body (PATCH …/webhook-endpoints/:id) is made from the create's fields: every one
 * optional, none reset by its absence. A create field with a default (a setting the create fills in)
 * must not take that default in an update that does not send it — `.partial()` alone would apply it.
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { endpointPatch, patchOf } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';

describe('patchOf: an update schema from a create shape', () => {
  const shape = { url: z.string(), rate_limit_per_second: z.number().int().min(1).default(10), note: z.string().optional() };

  it('makes every field optional and applies no default: a field not sent stays absent', () => {
    const patch = z.strictObject(patchOf(shape));
    expect(patch.parse({ url: 'https://example.com' })).toEqual({ url: 'https://example.com' });
    expect(patch.parse({})).toEqual({});
    expect(patch.parse({ rate_limit_per_second: 3 })).toEqual({ rate_limit_per_second: 3 });
  });

  it("keeps each field's own checks", () => {
    const patch = z.strictObject(patchOf(shape));
    expect(patch.safeParse({ rate_limit_per_second: 0 }).success).toBe(false);
    expect(patch.safeParse({ url: 7 }).success).toBe(false);
  });
});

describe('the endpoint update body', () => {
  it('sends on exactly the fields given, refuses an empty body and unknown fields, and lets description be cleared', () => {
    expect(endpointPatch.parse({ description: 'x' })).toEqual({ description: 'x' });
    expect(endpointPatch.parse({ description: null })).toEqual({ description: null });
    expect(endpointPatch.safeParse({}).success).toBe(false);
    expect(endpointPatch.safeParse({ secret: 'whsec_x' }).success).toBe(false);
    expect(endpointPatch.safeParse({ events: [] }).success).toBe(false);
  });
});
