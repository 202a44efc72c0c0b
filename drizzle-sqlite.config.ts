import { defineConfig } from "drizzle-kit";

/** The embedded envelope log (bun:sqlite); the PostgreSQL schema is drizzle.config.ts. */
export default defineConfig({
  dialect: "sqlite",
  schema: "./src/db/log-schema.ts",
  out: "./drizzle-sqlite",
});
