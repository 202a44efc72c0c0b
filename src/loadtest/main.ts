/**
 * `npm run loadtest -- <scenario> [options]`: the load-test harness. Prints a table of the run on
 * stdout (and with `--json` one JSON object as the last line); exits 1 when a message was lost or
 * duplicated (chaos: also unanswered, out of order, or a node exited), 2 on bad options; `--help`
 * prints the usage and exits 0.
 */
import { parseOptions, USAGE } from "./options.ts";
import { jsonSummary, textReport } from "./report.ts";
import { runLoadtest } from "./run.ts";
import { chaosClean, chaosReport, runChaos } from "./scenarios/chaos.ts";

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  let options: ReturnType<typeof parseOptions>;
  try {
    options = parseOptions(argv);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    console.error(`loadtest: ${message}\n\n${USAGE}`);
    return 2;
  }
  if (options.scenario === "chaos") {
    const chaos = await runChaos(options);
    console.log(chaosReport(chaos));
    if (options.json) console.log(JSON.stringify(chaos));
    return chaosClean(chaos) ? 0 : 1;
  }
  const run = await runLoadtest(options);
  const summary = jsonSummary(run);
  console.log(textReport(run));
  if (options.json) console.log(JSON.stringify(summary));
  return summary.lost === 0 && summary.duplicated === 0 && summary.corrupted === 0 ? 0 : 1;
}

try {
  process.exit(await main());
} catch (error) {
  console.error(`loadtest failed: ${error instanceof Error ? error.stack : String(error)}`);
  process.exit(1);
}
