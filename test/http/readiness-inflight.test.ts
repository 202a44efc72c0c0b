import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, createServer, type Server, type Socket } from "node:net";
import { type ReadinessCheck, sharedReadiness } from "../../src/http/app.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { waitUntil } from "../support/ws.ts";

/**
 * A service that accepts connections and never answers until told to (a Redis or PostgreSQL whose
 * process stopped): each check connects, sends `PING\n` and waits for `PONG\n`.
 */
describe("/readyz with a check that hangs: at most one call of it in flight", () => {
  let server: Server;
  let port = 0;
  /** Connections the service holds without answering. */
  const held: Socket[] = [];
  let answering = false;
  /** Every socket the checks opened, to close at the end. */
  const opened: Socket[] = [];

  beforeAll(async () => {
    server = createServer((socket) => {
      socket.on("error", () => {});
      socket.on("data", () => {
        if (answering) socket.write("PONG\n");
        else held.push(socket);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    for (const socket of [...opened, ...held]) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  let calls = 0;
  const hanging: ReadinessCheck = {
    name: "stalled",
    check: () => {
      calls++;
      return new Promise<void>((resolve, reject) => {
        const socket = connect(port, "127.0.0.1", () => socket.write("PING\n"));
        opened.push(socket);
        socket.on("data", (data) => {
          if (data.toString().includes("PONG")) resolve();
          socket.end();
        });
        socket.on("error", reject);
      });
    },
  };
  const quick: ReadinessCheck = { name: "database", check: async () => {} };

  test("rounds that meet the hung call report it unavailable without starting another; once it settles, a fresh one runs", async () => {
    const logger = createLogger({ level: "silent", nodeId: "readiness-test" });
    const readiness = sharedReadiness([quick, hanging], logger, { timeoutMs: 100, reuseMs: 0 });
    const rounds = 8;
    for (let i = 0; i < rounds; i++) {
      const answer = await readiness();
      expect(answer).toEqual({ ready: false, services: { database: "ok", stalled: "unavailable" } });
    }
    // Every round asked for the check; one call of it was started, and it is the one still waiting.
    expect(calls).toBe(1);
    await waitUntil(() => held.length === 1, "the first check's PING to reach the stalled service");
    // The service answers again: the call in flight settles, and a later round is ready.
    answering = true;
    for (const socket of held) socket.write("PONG\n");
    let answer = await readiness();
    await waitUntil(
      async () => {
        answer = await readiness();
        return answer.ready;
      },
      () => `/readyz to be ready again (last: ${JSON.stringify(answer)})`,
      30_000,
    );
    expect(answer.services).toEqual({ database: "ok", stalled: "ok" });
  }, 60_000);
});
