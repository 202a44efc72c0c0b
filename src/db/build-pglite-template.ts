/**
 * `npm run db:template`: rebuilds src/db/pglite-template.tar.gz (an initialised, migrated PGlite
 * data directory) and its version file. Run after upgrading PGlite, or to fold new migrations in.
 */
import { writeFileSync } from "node:fs";
import { PGlite } from "@electric-sql/pglite";
import { drizzle } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import { MIGRATIONS } from "./index.ts";
import { installedPgliteVersion, PGLITE_TEMPLATE, PGLITE_TEMPLATE_VERSION_FILE } from "./pglite-template.ts";

const client = await PGlite.create();
await migrate(drizzle(client), { migrationsFolder: MIGRATIONS });
const dump = await client.dumpDataDir("gzip");
await client.close();
writeFileSync(PGLITE_TEMPLATE, Buffer.from(await dump.arrayBuffer()));
writeFileSync(
  PGLITE_TEMPLATE_VERSION_FILE,
  `${JSON.stringify({ pglite: installedPgliteVersion() }, null, 2)}\n`,
);
console.log(`wrote ${PGLITE_TEMPLATE} (${dump.size} bytes)`);
