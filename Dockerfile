# One image for the api, worker and migrate services (Node 24 runs the TypeScript sources directly).
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY src ./src
COPY workers ./workers
COPY migrations ./migrations
# The npm scripts run through it (`docker compose exec api npm run -s token -- …`, `npm run readiness`, `npm run db:check`):
# with the image's Node 24 it only execs node.
COPY .ci/node ./.ci/node
USER node
EXPOSE 3000
CMD ["node", "--import", "./src/platform/telemetry/register.ts", "src/server.ts"]
