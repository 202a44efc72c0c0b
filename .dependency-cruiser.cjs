/**
 * The import rules of docs/ARCHITECTURE.md, checked by `npm run depcheck` (in .ci/run).
 * @type {import('dependency-cruiser').IConfiguration}
 */
module.exports = {
  forbidden: [
    {
      name: "no-module-cycles",
      severity: "error",
      comment: "No module imports itself through others.",
      from: {},
      to: { circular: true },
    },
    {
      name: "no-folder-cycles",
      severity: "error",
      comment: "No folder of src/ or actors/ imports itself through other folders (one hop per concern).",
      scope: "folder",
      from: { path: "^(src|actors)/" },
      to: { circular: true },
    },
    {
      name: "actors-import-nothing-from-src",
      severity: "error",
      comment: "actors/ declares the ports it needs; src/ implements them (docs/ACTORS.md).",
      from: { path: "^actors/" },
      to: { path: "^src/" },
    },
    {
      name: "protocol-is-a-leaf",
      severity: "error",
      comment: "The wire contract imports nothing of the project: clients and server share it.",
      from: { path: "^src/protocol/" },
      to: { path: "^(src|actors)/", pathNot: "^src/protocol/" },
    },
    {
      name: "features-do-not-import-the-edges",
      severity: "error",
      comment:
        "Features throw DomainError and export services and models; only the edges (http, admin, gateway) and the composition root know HTTP and sockets.",
      from: {
        path: "^src/",
        pathNot: "^src/(http|admin|gateway|node\\.ts|main\\.ts|loadtest|cli|client|webclient)",
      },
      to: { path: "^src/(http|admin|gateway)/|^src/node\\.ts$|^src/main\\.ts$" },
    },
    {
      name: "clients-stay-clients",
      severity: "error",
      comment:
        "The SDK and CLI run without the server: they import the protocol, each other and server types only.",
      from: { path: "^src/(client|cli|webclient)/" },
      to: {
        path: "^(src|actors)/",
        pathNot: "^src/(client|cli|webclient|protocol)/",
        dependencyTypesNot: ["type-only"],
      },
    },
    {
      name: "harness-stays-a-client",
      severity: "error",
      comment:
        "The load harness drives servers from outside: besides the SDK it may use the actor system (its micro-benchmark), clean up its Redis keys and stamp the stage trace its nodes stamp too (observability/stage-trace.ts); the envelope-log micro-benchmark (log-bench.ts) opens the logs themselves, the unit-cost benchmark (unit-costs.ts, docs/SCALING.md) measures the store adapters themselves, and the socket revalidation benchmark (revalidation-bench.ts) runs the gateway's revalidation over its own registry.",
      from: {
        path: "^src/loadtest/",
        pathNot: "^src/loadtest/(log-bench|unit-costs|revalidation-bench)\\.ts$",
      },
      to: {
        path: "^(src|actors)/",
        pathNot: "^src/(client|loadtest|protocol|redis)/|^actors/|^src/observability/stage-trace\\.ts$",
        dependencyTypesNot: ["type-only"],
      },
    },
    {
      name: "no-unresolvable",
      severity: "error",
      comment: "Every import resolves to a file or an installed package.",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    includeOnly: "^(src|actors|test)/",
    parser: "swc",
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { extensions: [".ts", ".js"] },
  },
};
