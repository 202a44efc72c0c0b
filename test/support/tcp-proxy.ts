import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP forwarder on 127.0.0.1 (random port) to `target` (host:port), for tests that need a
 * network fault between a client and a node: `cut()` drops every open connection (the client sees
 * its socket close without a close frame), `refuse(true)` makes new connections fail until
 * `refuse(false)`, `blackHole()` silences the connections open now for good (nothing more is
 * forwarded either way, nothing is closed: a peer that hung, or a link dropping every packet, as
 * the kernel still acknowledges what is sent), and `stall(true)` holds what every connection, open
 * or new, sends until `stall(false)` forwards it in order (a link that stopped for a while).
 */
export interface TcpProxy {
  url: string;
  port: number;
  cut(): void;
  refuse(on: boolean): void;
  blackHole(): void;
  stall(on: boolean): void;
  close(): Promise<void>;
}

/** One proxied connection's two ends and the chunks held while it is stalled. */
interface Link {
  client: Socket;
  upstream: Socket;
  silenced: boolean;
  held: { to: Socket; chunk: Buffer }[];
}

/**
 * `onClientData`: hears every chunk a client sends towards `target`, with the client connection's
 * number (0, 1, … in order of accept), before it is forwarded (tests that read a wire protocol).
 * `onServerData`: the same for every chunk `target` sends back to a client.
 * `toClientDelayMs`: every chunk from `target` reaches the client this many ms late, in order (a
 * slow reader: tests of what must not depend on another process having read something yet).
 */
export async function startTcpProxy(
  target: string,
  options: {
    onClientData?: (chunk: Buffer, connection: number) => void;
    onServerData?: (chunk: Buffer, connection: number) => void;
    toClientDelayMs?: number;
  } = {},
): Promise<TcpProxy> {
  const { hostname, port: targetPort, protocol } = new URL(target);
  const open = new Set<Socket>();
  const links = new Set<Link>();
  let refusing = false;
  let stalled = false;
  let accepted = 0;
  const forward = (link: Link, to: Socket, chunk: Buffer) => {
    if (link.silenced) return;
    if (stalled) link.held.push({ to, chunk });
    else to.write(chunk);
  };
  const server: Server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: hostname, port: Number(targetPort) });
    open.add(client);
    open.add(upstream);
    const link: Link = { client, upstream, silenced: false, held: [] };
    links.add(link);
    const { onClientData } = options;
    const connection = accepted++;
    client.on("data", (chunk: Buffer) => {
      onClientData?.(chunk, connection);
      forward(link, upstream, chunk);
    });
    const { toClientDelayMs, onServerData } = options;
    if (onServerData) upstream.on("data", (chunk: Buffer) => onServerData(chunk, connection));
    if (toClientDelayMs === undefined) upstream.on("data", (chunk: Buffer) => forward(link, client, chunk));
    else
      upstream.on(
        "data",
        (chunk: Buffer) => void setTimeout(() => forward(link, client, chunk), toClientDelayMs),
      );
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
      links.delete(link);
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
    blackHole() {
      for (const link of links) {
        link.silenced = true;
        link.held = [];
      }
    },
    stall(on) {
      stalled = on;
      if (on) return;
      for (const link of links) for (const { to, chunk } of link.held.splice(0)) to.write(chunk);
    },
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
