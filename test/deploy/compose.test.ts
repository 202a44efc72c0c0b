import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { loadConfig } from "../../src/config/index.ts";

const ROOT = resolve(import.meta.dir, "../..");
const composeText = readFileSync(resolve(ROOT, "docker-compose.yml"), "utf8");
interface Service {
  environment?: Record<string, string>;
  image?: string;
  build?: string;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
}
const compose = Bun.YAML.parse(composeText) as { services: Record<string, Service> };
const NODES = ["clearbox-1", "clearbox-2"];
const secrets = { JWT_SECRET: "j".repeat(40), ADMIN_TOKEN: "a".repeat(20) };

/** Resolves `${VAR:-default}` and `${VAR:?message}` the way compose would with the given variables. */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{(\w+)(?::([-?])([^}]*))?\}/g, (_, name: string, kind?: string, rest?: string) => {
    if (vars[name] !== undefined) return vars[name];
    if (kind === "-") return rest ?? "";
    throw new Error(`compose requires ${name}: ${rest}`);
  });
}

/** A node service's environment as the container would get it. */
function nodeEnv(service: string, vars: Record<string, string> = secrets): Record<string, string> {
  const env = compose.services[service].environment ?? {};
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(String(v), vars)]));
}

describe("docker-compose.yml", () => {
  test("runs a proxy and two ClearBox nodes with PostgreSQL, Redis, RabbitMQ and MongoDB", () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      "clearbox-1",
      "clearbox-2",
      "mongodb",
      "postgres",
      "proxy",
      "rabbitmq",
      "redis",
    ]);
    for (const node of NODES) expect(compose.services[node].build).toBe(".");
    expect(compose.services.proxy.image).toStartWith("nginx:");
  });

  test("each node's environment passes the server's own configuration check, as one cluster", () => {
    const configs = NODES.map((node) => loadConfig(nodeEnv(node)));
    for (const config of configs) {
      expect(config.env).toBe("production");
      expect(config.databaseUrl).toStartWith("postgres://");
      expect(config.redisUrl).toStartWith("redis://");
      expect(config.amqpUrl).toStartWith("amqp://");
      expect(config.mongodbUrl).toStartWith("mongodb://");
    }
    // One cluster: the same stores and key prefix, a name of its own each.
    const [one, two] = configs;
    expect(two.databaseUrl).toBe(one.databaseUrl as string);
    expect(two.redisUrl).toBe(one.redisUrl as string);
    expect(two.redisPrefix).toBe(one.redisPrefix);
    expect(configs.map((c) => c.nodeId)).toEqual(NODES);
    expect(loadConfig(nodeEnv("clearbox-1", { ...secrets, LOG_FORMAT: "ecs" })).logFormat).toBe("ecs");
  });

  test("deploy/filebeat/filebeat.yml keeps the events of exactly the compose nodes' containers", () => {
    const filebeat = Bun.YAML.parse(readFileSync(resolve(ROOT, "deploy/filebeat/filebeat.yml"), "utf8")) as {
      "filebeat.inputs": { parsers: Record<string, unknown>[]; processors: Record<string, any>[] }[];
    };
    const [input] = filebeat["filebeat.inputs"];
    expect(input.parsers.map((p) => Object.keys(p)[0])).toEqual(["container", "ndjson"]);
    const drop = input.processors.find((p) => p.drop_event)?.drop_event;
    const pattern = new RegExp(drop.when.not.regexp["container.labels.com_docker_compose_service"]);
    const kept = Object.keys(compose.services).filter((name) => pattern.test(name));
    expect(kept).toEqual(NODES);
  });

  test("refuses to interpolate without the production secrets", () => {
    for (const node of NODES) {
      const env = compose.services[node].environment ?? {};
      expect(() => interpolate(String(env.JWT_SECRET), {})).toThrow("compose requires JWT_SECRET");
      expect(() => interpolate(String(env.ADMIN_TOKEN), {})).toThrow("compose requires ADMIN_TOKEN");
    }
  });

  test("only the proxy is published beyond loopback; each admin listener on the host's loopback only", () => {
    const published = Object.entries(compose.services).flatMap(([name, service]) =>
      (service.ports ?? []).map((port) => [name, port] as const),
    );
    for (const [name, port] of published) {
      if (name !== "proxy") expect(port).toStartWith("127.0.0.1:");
    }
    expect(compose.services.proxy.ports).toEqual(["443:443"]);
    expect(compose.services["clearbox-1"].ports).toEqual(["127.0.0.1:9091:9090"]);
    expect(compose.services["clearbox-2"].ports).toEqual(["127.0.0.1:9092:9090"]);
    for (const node of NODES) expect(nodeEnv(node).ADMIN_PORT).toBe("9090");
  });

  test("the proxy runs deploy/nginx/clearbox.conf, whose upstreams are the two nodes' public ports", () => {
    const volumes = compose.services.proxy.volumes ?? [];
    expect(volumes).toContain("./deploy/nginx/clearbox.conf:/etc/nginx/conf.d/default.conf:ro");
    expect(volumes.map((v) => interpolate(v, {}))).toContain("./deploy/tls:/etc/nginx/tls:ro");
    const conf = readFileSync(resolve(ROOT, "deploy/nginx/clearbox.conf"), "utf8");
    const upstreams = [...conf.matchAll(/^\s*server (\S+):(\d+)/gm)].map((m) => [m[1], m[2]]);
    expect(upstreams).toEqual(NODES.map((node) => [node, nodeEnv(node).PORT]));
    expect(conf).toContain("listen 443 ssl;");
    expect(conf).toContain("ssl_certificate     /etc/nginx/tls/fullchain.pem;");
    expect(Object.keys(compose.services.proxy.depends_on ?? {}).sort()).toEqual(NODES);
  });

  const composeCli = Bun.which("docker-compose");
  test.skipIf(!composeCli)("is accepted by `docker-compose config`", () => {
    const run = Bun.spawnSync([composeCli as string, "config", "-q"], {
      cwd: ROOT,
      env: { ...process.env, ...secrets },
    });
    expect(run.stderr.toString()).toBe("");
    expect(run.exitCode).toBe(0);
  });
});
