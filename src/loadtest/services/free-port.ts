import { createServer } from "node:net";

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === "string") throw new Error("no port from the kernel");
  return address.port;
}

/**
 * Resolves once `probe` resolves, trying every 50 ms; rejects with its last error after `timeoutMs`,
 * or at once with a `BootExited` the probe throws (the server is gone: waiting is pointless).
 */
export async function waitFor(
  what: string,
  probe: () => Promise<unknown>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      await probe();
      return;
    } catch (error) {
      if (error instanceof BootExited) throw error;
      last = error;
      await Bun.sleep(50);
    }
  }
  throw new Error(`${what} did not come up within ${timeoutMs} ms: ${String(last)}`);
}

/**
 * A server process that exited while it booted: on a port chosen by `freePort`, most often
 * because another process bound that port between the choice and the server's bind.
 */
export class BootExited extends Error {}

/** Source of candidate ports for a private server (tests pass their own to force a clash). */
export type PortSource = () => Promise<number>;

/** How many ports a private server's first boot tries before its error is thrown. */
export const BOOT_ATTEMPTS = 3;

/**
 * Boots a private server on fresh ports until one boot works: `boot(ports)` picks its port(s)
 * from `ports`, cleans up after itself and throws `BootExited` when its process exited during boot
 * (another process took a port between `freePort`'s choice and the server's bind); that is retried
 * on new ports, up to `attempts` boots, then the last error is thrown. Any other error (a boot
 * timeout, a missing binary) is thrown at once. `ports` defaults to `freePort`.
 */
export async function bootOnFreePorts<T>(
  boot: (ports: PortSource) => Promise<T>,
  ports: PortSource = freePort,
  attempts = BOOT_ATTEMPTS,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await boot(ports);
    } catch (error) {
      if (!(error instanceof BootExited) || attempt >= attempts) throw error;
    }
  }
}
