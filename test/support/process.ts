/** What a finished child process printed, and how it ended. */
export interface Finished {
  /** Exit code (null when a signal ended it). */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` to its end and collects its output. Asynchronous on purpose: a node under test
 * may serve from this process, and a blocking spawnSync would leave the child's requests
 * unanswered. With `timeoutMs`, the child is killed (SIGKILL) if it has not exited by then.
 */
export async function runToEnd(
  command: string[],
  options: { cwd?: string; env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<Finished> {
  const child = Bun.spawn(command, {
    cwd: options.cwd,
    env: options.env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer =
    options.timeoutMs === undefined ? undefined : setTimeout(() => child.kill(9), options.timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}
