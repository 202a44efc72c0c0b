import { describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { createLogger, type LogFormat } from "../../src/observability/logger.ts";
import { api, type SessionBody, uniqueUsername } from "../support/http.ts";
import { startTestNode } from "../support/node.ts";

const FORMATS: LogFormat[] = ["json", "ecs"];

/** A logger in `format` whose lines land in the returned array. */
function capture(format: LogFormat) {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { logger: createLogger({ level: "debug", nodeId: "node-7", format, destination }), lines };
}

/** Every dotted path in `value` whose leaf is the censor. */
function redactedPaths(value: unknown, path = ""): string[] {
  if (value === "[redacted]") return [path];
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([key, inner]) => redactedPaths(inner, path ? `${path}.${key}` : key));
}

/** Values that must never be written, under the keys the code would use for them. */
const SECRETS = {
  password: "pw-0d1e-secret",
  username: "alice-5b7c-name",
  passwordHash: "$argon2id$v=19$m=65536,t=2,p=1$hash-9a9a",
  token: "tok-77e1-secret",
  accessToken: "eyJ-access-4c4c",
  refreshToken: "refresh-8f8f-secret",
  body: "Y2lwaGVydGV4dC1iNjY2",
  envelope: { type: 3, body: "ZW52ZWxvcGUtMzMzMw" },
  messages: [{ deviceId: 1, type: 3, body: "bWVzc2FnZS0xMjEy" }],
  headers: { authorization: "Bearer hdr-2222-secret" },
  account: { username: "bob-6d6d-name", password: "pw-1e1e-nested" },
  session: { refreshToken: "refresh-3f3f-nested", accessToken: "access-4a4a-nested" },
  config: { adminToken: "admin-5e5e-secret", jwtSecret: "jwt-6f6f-secret" },
};
const NEEDLES = [
  "pw-0d1e",
  "alice-5b7c",
  "hash-9a9a",
  "tok-77e1",
  "access-4c4c",
  "refresh-8f8f",
  "Y2lwaGVydGV4dC1iNjY2",
  "ZW52ZWxvcGUtMzMzMw",
  "bWVzc2FnZS0xMjEy",
  "hdr-2222",
  "bob-6d6d",
  "pw-1e1e",
  "refresh-3f3f",
  "access-4a4a",
  "admin-5e5e",
  "jwt-6f6f",
];

describe("log formats: json and Elastic Common Schema", () => {
  test.each(FORMATS)("%s: nothing that must be redacted is written", (format) => {
    const { logger, lines } = capture(format);
    logger.info({ ...SECRETS, route: "/v1/sessions", status: 200 }, "probe");
    const output = lines.join("");
    for (const needle of NEEDLES) expect(output).not.toContain(needle);
    const line = JSON.parse(output);
    expect(line.route).toBe("/v1/sessions");
    expect(line.status).toBe(200);
  });

  test("both formats redact exactly the same fields", () => {
    const paths = FORMATS.map((format) => {
      const { logger, lines } = capture(format);
      logger.info({ ...SECRETS }, "probe");
      return redactedPaths(JSON.parse(lines[0])).sort();
    });
    expect(paths[0].length).toBe(16);
    expect(paths[1]).toEqual(paths[0]);
  });

  test("ecs lines carry the ECS fields Filebeat and Kibana expect", () => {
    const { logger, lines } = capture("ecs");
    logger.warn({ route: "/v1/ws" }, "something happened");
    const line = JSON.parse(lines[0]);
    expect(line).toMatchObject({
      "log.level": "warn",
      message: "something happened",
      "service.name": "clearbox",
      "service.node.name": "node-7",
      route: "/v1/ws",
    });
    expect(line["ecs.version"]).toMatch(/^\d+\.\d+/);
    expect(new Date(line["@timestamp"]).toISOString()).toBe(line["@timestamp"]);
    expect(line.msg).toBeUndefined();
  });

  test("an error becomes ECS error.* fields in ecs and pino's err in json, without its message", () => {
    const ecs = capture("ecs");
    ecs.logger.error({ err: new TypeError("bad frame") }, "failed");
    const ecsLine = JSON.parse(ecs.lines[0]);
    expect(ecsLine.error).toMatchObject({ type: "TypeError" });
    expect(ecsLine.error.stack_trace).toContain("at ");
    expect(ecs.lines[0]).not.toContain("bad frame");
    const json = capture("json");
    json.logger.error({ err: new TypeError("bad frame") }, "failed");
    expect(JSON.parse(json.lines[0])).toMatchObject({
      node: "node-7",
      msg: "failed",
      err: { type: "TypeError" },
    });
    expect(json.lines[0]).not.toContain("bad frame");
  });

  test.each(FORMATS)(
    "a node with LOG_FORMAT=%s logs in that format and never a username or password",
    async (format) => {
      const node = await startTestNode("pglite", { env: { LOG_FORMAT: format } });
      try {
        const client = api(node.url);
        const username = uniqueUsername("logcheck");
        const password = "pw-in-a-real-request-71d2";
        expect((await client.post("/v1/accounts", { username, password })).status).toBe(201);
        const login = await client.post<SessionBody>("/v1/sessions", {
          username,
          password,
          registrationId: 7,
        });
        expect(login.status).toBe(201);
        const wrong = await client.post("/v1/sessions", { username, password: "wrong-pw-3c3c" });
        expect(wrong.status).toBe(401);
        // Request lines are logged at debug level after the response is sent: wait for all three.
        const requestLines = () => node.logs.filter((l) => l.includes('"/v1/')).length;
        for (let waited = 0; requestLines() < 3 && waited < 2000; waited += 20) await Bun.sleep(20);
        expect(requestLines()).toBe(3);
        const output = node.logs.join("");
        expect(output).toContain("clearbox node started");
        for (const needle of [
          username,
          password,
          "wrong-pw-3c3c",
          login.body.accessToken,
          login.body.refreshToken,
        ])
          expect(output).not.toContain(needle);
        const started = JSON.parse(node.logs.find((l) => l.includes("clearbox node started")) as string);
        if (format === "ecs") expect(started.message).toBe("clearbox node started");
        else expect(started.msg).toBe("clearbox node started");
      } finally {
        await node.teardown();
      }
    },
  );
});
