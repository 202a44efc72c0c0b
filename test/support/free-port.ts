import { createServer, type Server, type Socket } from "node:net";
import { freePort, type PortSource } from "../../src/loadtest/services/free-port.ts";

// The starters of private service instances live beside the load harness, which uses them too.
export {
  BootExited,
  bootOnFreePorts,
  freePort,
  type PortSource,
  waitFor,
} from "../../src/loadtest/services/free-port.ts";

/**
 * A port source for a test of the pick-then-bind race: hands out `taken` first (a port something
 * already listens on, as if another process took it between the choice and the bind), then ports
 * free a moment ago.
 */
export function takenFirst(taken: number): PortSource {
  let handedOut = false;
  return async () => {
    if (handedOut) return freePort();
    handedOut = true;
    return taken;
  };
}

/**
 * A plain TCP listener on a free port of 127.0.0.1 that accepts and never answers: a port some
 * other program holds. `release` closes it and the connections it accepted.
 */
export async function holdPort(): Promise<{ port: number; release(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    socket.on("error", () => {});
    sockets.add(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    release: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
