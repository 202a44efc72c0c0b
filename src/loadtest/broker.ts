/**
 * What the RabbitMQ broker holds, read with its own CLI tools on this machine (`rabbitmqctl`,
 * `rabbitmq-diagnostics`): the harness's broker figures. The broker is shared, so memory is the
 * whole node's (other users of the broker count too); queue counts are the run's own.
 */

/** One reading of the broker. */
export interface BrokerSnapshot {
  /** Queues whose name starts with `<prefix>.dev.`: the run's offline queues. */
  offlineQueues: number;
  /** Ready messages in those queues. */
  offlineMessages: number;
  /** The node's memory (`rabbitmq-diagnostics memory_breakdown`, bytes): all of it, and queue processes'. */
  totalBytes: number;
  queueProcsBytes: number;
}

/** `-n <node>` when RABBITMQ_NODE names the node to read (a private broker), else the local default. */
function nodeArgs(): string[] {
  const node = process.env.RABBITMQ_NODE;
  return node ? ["-n", node] : [];
}

async function run(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}: ${err.trim().slice(0, 300)}`);
  return out;
}

/**
 * Counts the offline queues of `prefix` (`rabbitmqctl list_queues name messages`) and reads the
 * broker's memory breakdown (`rabbitmq-diagnostics memory_breakdown --formatter json`, bytes).
 * Throws when the tools are missing or cannot reach the node (run as a user allowed to).
 */
export async function brokerSnapshot(prefix: string): Promise<BrokerSnapshot> {
  const listing = await run([
    "rabbitmqctl",
    ...nodeArgs(),
    "-q",
    "--no-table-headers",
    "list_queues",
    "name",
    "messages",
  ]);
  const start = `${prefix}.dev.`;
  let offlineQueues = 0;
  let offlineMessages = 0;
  for (const line of listing.split("\n")) {
    const [name, messages] = line.split("\t");
    if (!name?.startsWith(start)) continue;
    offlineQueues++;
    offlineMessages += Number(messages) || 0;
  }
  const memory = await brokerMemory();
  return { offlineQueues, offlineMessages, ...memory };
}

/**
 * The broker node's memory (`rabbitmq-diagnostics memory_breakdown --unit bytes --formatter json`):
 * the sum of its parts (what the runtime has allocated) and the queue processes' share.
 */
export async function brokerMemory(): Promise<{
  totalBytes: number;
  queueProcsBytes: number;
  binaryBytes: number;
}> {
  const breakdown = JSON.parse(
    await run([
      "rabbitmq-diagnostics",
      ...nodeArgs(),
      "-q",
      "memory_breakdown",
      "--unit",
      "bytes",
      "--formatter",
      "json",
    ]),
  ) as Record<string, { bytes: number }>;
  const totalBytes = Object.values(breakdown).reduce((sum, part) => sum + (part.bytes ?? 0), 0);
  return {
    totalBytes,
    queueProcsBytes: breakdown.queue_procs?.bytes ?? 0,
    binaryBytes: breakdown.binary?.bytes ?? 0,
  };
}
