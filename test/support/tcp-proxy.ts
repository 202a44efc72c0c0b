import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP forwarder on 127.0.0.1 (random port) to `target` (host:port), for tests that need a
 * network fault between a client and a node: `cut()` drops every open connection (the client sees
 * its socket close without a close frame), `refuse(true)` makes new connections fail until
 * `refuse(false)`.
 */
export interface TcpProxy {
  url: string;
  port: number;
  cut(): void;
  refuse(on: boolean): void;
  close(): Promise<void>;
}

/**
 * `onClientData`: hears every chunk a client sends towards `target`, with the client connection's
 * number (0, 1, … in order of accept), before it is forwarded (tests that read a wire protocol).
 * `toClientDelayMs`: every chunk from `target` reaches the client this many ms late, in order (a
 * slow reader: tests of what must not depend on another process having read something yet).
 */
export async function startTcpProxy(
  target: string,
  options: { onClientData?: (chunk: Buffer, connection: number) => void; toClientDelayMs?: number } = {},
): Promise<TcpProxy> {
  const { hostname, port: targetPort, protocol } = new URL(target);
  const open = new Set<Socket>();
  let refusing = false;
  let accepted = 0;
  const server: Server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: hostname, port: Number(targetPort) });
    open.add(client);
    open.add(upstream);
    const { onClientData } = options;
    if (onClientData) {
      const connection = accepted++;
      client.on("data", (chunk: Buffer) => onClientData(chunk, connection));
    }
    client.pipe(upstream);
    const { toClientDelayMs } = options;
    if (toClientDelayMs === undefined) upstream.pipe(client);
    else upstream.on("data", (chunk: Buffer) => void setTimeout(() => client.write(chunk), toClientDelayMs));
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `${protocol}//127.0.0.1:${port}`,
    port,
    cut() {
      for (const socket of open) socket.destroy();
      open.clear();
    },
    refuse(on) {
      refusing = on;
    },
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
