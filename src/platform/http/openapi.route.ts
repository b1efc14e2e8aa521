import type { Request, Response } from 'express';
import type { Logger } from 'pino';
import type { RouteDef } from './route.ts';
import { buildOpenApi } from './openapi.ts';
import { renderOpenApiHtml } from './openapi-docs.ts';

/** GET /openapi.json and GET /docs: generated once, on first request, from the route declarations. */
export function openApiHandlers(routes: RouteDef[], logger: Logger) {
  let cached: { json: string; html: string } | undefined;
  const get = () => {
    if (!cached) {
      const { document, problems } = buildOpenApi(routes);
      if (problems.length) logger.warn({ problems }, 'some route schemas could not be converted to OpenAPI');
      cached = { json: JSON.stringify(document), html: renderOpenApiHtml(document) };
    }
    return cached;
  };
  return {
    json(_req: Request, res: Response): void {
      res.type('application/json').send(get().json);
    },
    docs(_req: Request, res: Response): void {
      res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'");
      res.type('html').send(get().html);
    },
  };
}
