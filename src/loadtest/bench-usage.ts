/**
 * `--help` / `-h` for the benchmark scripts (`npm run bench:*`): prints `usage` on stdout and exits
 * 0 before anything is measured, so asking a benchmark for its usage never starts it (some run
 * against the shared PostgreSQL, Redis and RabbitMQ).
 */
export function exitOnHelp(usage: string, argv: readonly string[] = process.argv.slice(2)): void {
  if (!argv.includes("--help") && !argv.includes("-h")) return;
  console.log(usage);
  process.exit(0);
}
