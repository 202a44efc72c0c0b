import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { sql } from "drizzle-orm";
import { ActorSystem, InMemoryMembership, InMemoryTransport } from "../../actors/index.ts";
import { serializeError } from "../../src/observability/error-serializer.ts";
import { createLogger, type LogFormat } from "../../src/observability/logger.ts";
import { validUpload } from "../keys/fixtures.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * Issue 12 item 7: a failed write must not put its parameters in a log line. Each store write path
 * below is made to fail with a constraint added for the test (a CHECK that refuses one known
 * secret value), so the driver's error, and drizzle's `DrizzleQueryError` around it (message
 * `Failed query: <SQL> params: <values>`), carry the secrets; every captured line is then searched.
 */
describe.each(BACKENDS)("a failed store write on %s logs no value", (backend) => {
  let node: TestNode;
  const tag = randomBytes(4).toString("hex");

  beforeAll(async () => {
    node = await startTestNode(backend, { env: { DEVICE_RATE_LIMIT: "100000" } });
    const db = node.database.db;
    await db.execute(
      sql.raw(
        `alter table accounts add constraint t_no_blocked_user check (username not like 'blocked${tag}%')`,
      ),
    );
    await db.execute(
      sql.raw(
        `alter table devices add constraint t_no_blocked_device check (name is null or name not like 'blocked${tag}%')`,
      ),
    );
    await db.execute(
      sql.raw(`alter table groups add constraint t_no_blocked_group check (name not like 'blocked${tag}%')`),
    );
    if (backend === "postgres") {
      // The envelope log is this database's `envelopes` table here (the embedded default's is SQLite).
      await db.execute(
        sql.raw(
          `alter table envelopes add constraint t_no_blocked_body check (body is null or position('blocked${tag}'::bytea in body) = 0)`,
        ),
      );
    }
  });
  afterAll(() => node?.teardown());

  /** Every line this node wrote, with a check that the failure was logged at all. */
  function linesSince(from: number, expectMessage: string): string {
    const lines = node.logs.slice(from);
    const failure = lines.map((l) => JSON.parse(l)).find((l) => l.msg === expectMessage);
    expect(failure).toBeDefined();
    // What the line keeps: the class, the SQLSTATE of a check violation, the constraint's name.
    const chain = JSON.stringify(failure.err);
    expect(chain).toContain('"code":"23514"');
    expect(chain).toContain('"constraint":"t_no_blocked_');
    return lines.join("");
  }

  test("an account insert: neither the username, the password nor its argon2 hash", async () => {
    const from = node.logs.length;
    const username = `blocked${tag}user`;
    const password = `pw-${tag}-secret-password`;
    const res = await api(node.url).post("/v1/accounts", { username, password });
    expect(res.status).toBe(500);
    const text = linesSince(from, "unhandled");
    for (const secret of [username, password, "$argon2", "argon2id", "insert into", "params"]) {
      expect(text).not.toContain(secret);
    }
  });

  test("a device insert at login: not the device name, nor the username", async () => {
    const someone = await registerAndLogin(api(node.url));
    const from = node.logs.length;
    const deviceName = `blocked${tag}device`;
    const res = await api(node.url).post("/v1/sessions", {
      username: someone.username,
      password: someone.password,
      registrationId: 7,
      deviceName,
    });
    expect(res.status).toBe(500);
    const text = linesSince(from, "unhandled");
    for (const secret of [deviceName, someone.username, someone.password, "insert into", "params"]) {
      expect(text).not.toContain(secret);
    }
  });

  test("a group insert: not the group's name nor its members", async () => {
    const owner = await registerAndLogin(api(node.url));
    const member = await registerAndLogin(api(node.url));
    const from = node.logs.length;
    const name = `blocked${tag}group`;
    const res = await api(node.url).post("/v1/groups", { name, members: [member.userId] }, owner.accessToken);
    expect(res.status).toBe(500);
    const text = linesSince(from, "unhandled");
    for (const secret of [name, member.userId, "insert into", "params"]) expect(text).not.toContain(secret);
  });

  test("a key upload: not the public keys nor the signature, in any encoding", async () => {
    const owner = await registerAndLogin(api(node.url));
    const { upload } = await validUpload(2);
    // This owner's signed prekey is refused (after the identity key was written, in the same transaction).
    await node.database.db.execute(
      sql.raw(
        `alter table signed_pre_keys add constraint t_no_blocked_key check (user_id <> '${owner.userId}')`,
      ),
    );
    const from = node.logs.length;
    const res = await api(node.url).put("/v1/keys", upload, owner.accessToken);
    expect(res.status).toBe(500);
    const text = linesSince(from, "unhandled");
    const b64 = [upload.identityKey, upload.signedPreKey.publicKey, upload.signedPreKey.signature];
    for (const value of b64) {
      expect(text).not.toContain(value);
      expect(text).not.toContain(Buffer.from(value, "base64").toString("hex"));
    }
    for (const secret of ["insert into", "params"]) expect(text).not.toContain(secret);
  });

  if (backend === "postgres") {
    test("an envelope insert: not the ciphertext, in any encoding", async () => {
      const alice = await registerAndLogin(api(node.url));
      const bob = await registerAndLogin(api(node.url));
      const socket = await TestSocket.open(node.url, alice.accessToken);
      const ciphertext = Buffer.from(`blocked${tag}ciphertext`);
      const from = node.logs.length;
      const id = randomUUID();
      socket.send({
        type: "send",
        id,
        to: { user: bob.userId },
        messages: [{ deviceId: bob.deviceId, type: 3, body: ciphertext.toString("base64") }],
      });
      // Not stored, so not accepted: the sender is told to send it again.
      const answer = await socket.next(
        (f) => (f.type === "error" && String(f.message).includes(id)) || f.id === id,
        15_000,
      );
      expect(answer.type).not.toBe("accepted");
      await socket.close();
      const text = linesSince(from, "send failed");
      for (const secret of [
        ciphertext.toString("base64"),
        ciphertext.toString("hex"),
        ciphertext.toString(),
        "insert into",
        "params",
      ]) {
        expect(text).not.toContain(secret);
      }
    });
  }
});

/** A logger of `format` capturing its lines. */
function capture(format: LogFormat) {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { logger: createLogger({ level: "debug", nodeId: "n", format, destination }), lines };
}

describe("the one error serializer", () => {
  /** An error shaped as drizzle and postgres.js shape theirs, carrying secrets in every field but the names. */
  function queryError() {
    const driver = Object.assign(new Error('new row violates check constraint "c1" secret-msg'), {
      name: "PostgresError",
      code: "23514",
      constraint_name: "c1",
      table_name: "envelopes",
      detail: "Failing row contains (secret-detail)",
      where: "secret-where",
    });
    return Object.assign(new Error("Failed query: insert into x values ($1)\nparams: secret-param"), {
      query: "insert into x values ($1) secret-query",
      params: ["secret-param"],
      cause: driver,
    });
  }

  test("keeps class, code, constraint, table and frames; drops messages, SQL, params and details", () => {
    const out = serializeError(queryError());
    expect(out).toMatchObject({
      type: "Error",
      cause: { type: "Error", code: "23514", constraint: "c1", table: "envelopes" },
    });
    expect(out.stack).toContain("at ");
    expect(JSON.stringify(out)).not.toContain("secret");
    expect(serializeError("secret-string")).toEqual({ type: "NonError(string)" });
  });

  test("a value in the message that looks like a stack frame is not taken for one", () => {
    // A client-chosen text (a group name: any 128 characters) among a failed query's params.
    const error = new Error(
      "Failed query: insert into groups (name) values ($1)\nparams: x\n    at secret-name (secret-param)",
    );
    const out = serializeError(error);
    expect(out.stack).toContain("at ");
    expect(JSON.stringify(out)).not.toContain("secret");
  });

  test.each(["json", "ecs"] as LogFormat[])(
    "every logger of the process in %s: under err, under another key, and from the actor system",
    async (format) => {
      const { logger, lines } = capture(format);
      logger.error({ err: queryError() }, "one");
      logger.warn({ reason: queryError(), nested: { error: queryError() } }, "two");
      logger.error(queryError());
      // The actor system is given the process's logger: an actor failing with a secret in its
      // error is logged through the same serializer.
      const system = new ActorSystem({
        nodeId: "n",
        membership: new InMemoryMembership("n"),
        transport: new InMemoryTransport("n"),
        logger,
      });
      system.register("failing", () => ({
        async receive() {
          throw Object.assign(new Error("secret-actor-message"), {
            params: ["secret-actor-param"],
            code: "E_X",
          });
        },
      }));
      await system.start();
      await system.ask("failing:1", { type: "x" }).catch(() => undefined);
      await system.stop();
      const text = lines.join("");
      expect(lines.length).toBeGreaterThanOrEqual(4);
      expect(text).toContain("E_X");
      expect(text).toContain("23514");
      expect(text).not.toContain("secret");
    },
  );
});
