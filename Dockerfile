# ClearBox on the official Bun image. Build: docker build -t clearbox .
FROM oven/bun:1.4.5 AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Bun reads package-lock.json, so the image gets the same versions as `npm ci`.
RUN bun install --production --frozen-lockfile

FROM oven/bun:1.4.5
WORKDIR /app
ENV NODE_ENV=production PORT=8080 ADMIN_PORT=9090 DATA_DIR=/data
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY src ./src
COPY actors ./actors
COPY drizzle ./drizzle
COPY drizzle-sqlite ./drizzle-sqlite
RUN mkdir -p /data && chown bun:bun /data
USER bun
VOLUME ["/data"]
EXPOSE 8080 9090
# Liveness over loopback: https when TLS_CERT_FILE is set (the certificate names the public host, not 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD bun -e "fetch((process.env.TLS_CERT_FILE ? 'https' : 'http') + '://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz', { tls: { rejectUnauthorized: false } }).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
CMD ["bun", "run", "src/main.ts"]
