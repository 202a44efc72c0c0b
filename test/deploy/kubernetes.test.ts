import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Deployment } from "kubernetes-models/apps/v1";
import { Ingress } from "kubernetes-models/networking.k8s.io/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Namespace, Secret, Service } from "kubernetes-models/v1";
import { ConfigError, loadConfig } from "../../src/config/index.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

const ROOT = resolve(import.meta.dir, "../..");
const BASE = resolve(ROOT, "deploy/kubernetes");
type Manifest = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; [key: string]: any };
  [key: string]: any;
};

const kustomization = Bun.YAML.parse(readFileSync(join(BASE, "kustomization.yaml"), "utf8")) as {
  resources: string[];
  namespace: string;
  images: { name: string; newName: string; newTag: string }[];
};
const manifests: { file: string; doc: Manifest }[] = kustomization.resources.map((file) => ({
  file,
  doc: Bun.YAML.parse(readFileSync(join(BASE, file), "utf8")) as Manifest,
}));
const byKind = (kind: string) => manifests.find((m) => m.doc.kind === kind)?.doc as Manifest;

/** kubernetes-models' class and TypeScript interface for each kind the base uses. */
const MODELS: Record<
  string,
  { model: new (data: any) => { validate(): void }; module: string; type: string }
> = {
  "v1/Namespace": { model: Namespace, module: "kubernetes-models/v1/Namespace", type: "INamespace" },
  "v1/ConfigMap": { model: ConfigMap, module: "kubernetes-models/v1/ConfigMap", type: "IConfigMap" },
  "v1/Secret": { model: Secret, module: "kubernetes-models/v1/Secret", type: "ISecret" },
  "v1/Service": { model: Service, module: "kubernetes-models/v1/Service", type: "IService" },
  "apps/v1/Deployment": {
    model: Deployment,
    module: "kubernetes-models/apps/v1/Deployment",
    type: "IDeployment",
  },
  "policy/v1/PodDisruptionBudget": {
    model: PodDisruptionBudget,
    module: "kubernetes-models/policy/v1/PodDisruptionBudget",
    type: "IPodDisruptionBudget",
  },
  "networking.k8s.io/v1/Ingress": {
    model: Ingress,
    module: "kubernetes-models/networking.k8s.io/v1/Ingress",
    type: "IIngress",
  },
};

/** The Deployment's container environment as a pod would get it, with `secrets` for the Secret's values. */
function podEnv(secrets: Record<string, string>): Record<string, string> {
  const container = byKind("Deployment").spec.template.spec.containers[0];
  const env: Record<string, string> = {};
  for (const source of container.envFrom) {
    if (source.configMapRef) Object.assign(env, byKind("ConfigMap").data);
    if (source.secretRef) Object.assign(env, byKind("Secret").stringData, secrets);
  }
  for (const variable of container.env) {
    // NODE_ID comes from the pod's name through the downward API.
    if (variable.valueFrom?.fieldRef?.fieldPath === "metadata.name")
      env[variable.name] = "clearbox-7d9f8b6c5-x2k4q";
    else env[variable.name] = variable.value;
  }
  return env;
}

const realSecrets = {
  JWT_SECRET: "k".repeat(48),
  ADMIN_TOKEN: "t".repeat(24),
  DATABASE_URL: "postgres://clearbox:pw@postgres.internal:5432/clearbox",
  REDIS_URL: "redis://:pw@redis.internal:6379",
  AMQP_URL: "amqp://clearbox:pw@rabbitmq.internal:5672",
  MONGODB_URL: "mongodb://clearbox:pw@mongodb.internal:27017/clearbox",
};

describe("deploy/kubernetes (kustomize base)", () => {
  test("every resource the kustomization lists is a Kubernetes object valid against the API schemas", () => {
    expect(manifests.map((m) => m.doc.kind).sort()).toEqual(
      ["ConfigMap", "Deployment", "Ingress", "Namespace", "PodDisruptionBudget", "Secret", "Service"].sort(),
    );
    for (const { file, doc } of manifests) {
      const entry = MODELS[`${doc.apiVersion}/${doc.kind}`];
      expect(entry, `${file}: ${doc.apiVersion} ${doc.kind}`).toBeDefined();
      // Throws with the schema path of the first problem (kubernetes-models' compiled JSON schemas).
      new entry.model(doc).validate();
    }
    expect(byKind("Namespace").metadata.name).toBe(kustomization.namespace);
  });

  test("no object has a field the API does not know (TypeScript's excess-property check on the API types)", async () => {
    // The OpenAPI schemas allow unknown fields, so a typo such as `periodSecond` passes validate();
    // the same API's TypeScript types refuse it in an object literal.
    const dir = join(ROOT, "node_modules/.cache/clearbox-kubernetes-check");
    mkdirSync(dir, { recursive: true });
    const lines = manifests.map(({ doc }, i) => {
      const { module, type } = MODELS[`${doc.apiVersion}/${doc.kind}`];
      return `import type { ${type} as T${i} } from "${module}";\nexport const m${i}: T${i} = ${JSON.stringify(doc)};`;
    });
    writeFileSync(join(dir, "manifests.ts"), `${lines.join("\n")}\n`);
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          module: "esnext",
          moduleResolution: "bundler",
          skipLibCheck: true,
          types: [],
        },
        files: ["manifests.ts"],
      }),
    );
    try {
      const tsc = Bun.spawn([join(ROOT, "node_modules/.bin/tsc"), "-p", join(dir, "tsconfig.json")], {
        stdout: "pipe",
        stderr: "pipe",
      });
      const output = `${await new Response(tsc.stdout).text()}${await new Response(tsc.stderr).text()}`;
      expect(output).toBe("");
      expect(await tsc.exited).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the Deployment's environment passes the server's own configuration check", () => {
    const config = loadConfig(podEnv(realSecrets));
    expect(config).toMatchObject({
      env: "production",
      port: 8080,
      publicHost: "0.0.0.0",
      adminHost: "127.0.0.1",
      adminPort: 9090,
      logFormat: "ecs",
      nodeId: "clearbox-7d9f8b6c5-x2k4q",
    });
    expect(config.databaseUrl).toStartWith("postgres://");
    expect(config.amqpUrl).toStartWith("amqp://");
  });

  test("the Secret's placeholders stop a node at start-up instead of running with a known secret", () => {
    expect(() => loadConfig(podEnv({}))).toThrow(ConfigError);
    expect(() => loadConfig(podEnv({}))).toThrow("JWT_SECRET: expected a secret of at least 32 characters");
    expect(() => loadConfig(podEnv({}))).toThrow(
      "ADMIN_TOKEN: expected a bearer token of at least 16 characters",
    );
    expect(JSON.stringify(byKind("Secret").stringData)).not.toMatch(/pw@|kkkk/);
  });

  test("probes: readiness on /readyz, liveness and start-up on /healthz, on the public port", () => {
    const deployment = byKind("Deployment");
    const container = deployment.spec.template.spec.containers[0];
    expect(container.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "http" });
    expect(container.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(container.startupProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(container.ports).toEqual([{ name: "http", containerPort: Number(podEnv(realSecrets).PORT) }]);
    expect(container.image).toBe(kustomization.images[0].name);
  });

  test("the grace period covers the pre-stop drain's own timeout; the PDB and Service select the pods", () => {
    const deployment = byKind("Deployment");
    const pod = deployment.spec.template;
    const script: string = pod.spec.containers[0].lifecycle.preStop.exec.command[2];
    const drainTimeoutMs = Number(/AbortSignal\.timeout\((\d+)\)/.exec(script)?.[1]);
    expect(drainTimeoutMs).toBeGreaterThan(0);
    expect(pod.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(drainTimeoutMs / 1000 + 30);
    const labels = pod.metadata.labels;
    expect(deployment.spec.selector.matchLabels).toEqual(labels);
    expect(byKind("PodDisruptionBudget").spec.selector.matchLabels).toEqual(labels);
    expect(byKind("Service").spec.selector).toEqual(labels);
    expect(byKind("PodDisruptionBudget").spec.maxUnavailable).toBeLessThan(deployment.spec.replicas);
  });

  test("the Ingress routes to the Service with WebSocket timeouts of an hour", () => {
    const ingress = byKind("Ingress");
    const annotations = ingress.metadata.annotations;
    expect(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]).toBe("3600");
    expect(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]).toBe("3600");
    const backend = ingress.spec.rules[0].http.paths[0].backend.service;
    expect(backend).toEqual({ name: byKind("Service").metadata.name, port: { name: "http" } });
  });
});

describe("the Deployment's pre-stop hook, run against two real nodes (services stack)", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let a: TestNode;
  let b: TestNode;

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = stackEnv("services", prefix);
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-a` } });
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-b` } });
    const deadline = Date.now() + 10_000;
    while (a.actors.ringMembers().length < 2 || b.actors.ringMembers().length < 2) {
      if (Date.now() > deadline) throw new Error("the two nodes never saw each other");
      await Bun.sleep(20);
    }
  });
  afterAll(async () => {
    await a?.teardown();
    await b?.teardown();
    await database?.drop();
  });

  test("drains the node through its admin RPC and exits 0 once its user actors are on the other node", async () => {
    // Twenty connected users, each sent a message: their actors activate on whichever node owns
    // them (a connection alone activates none).
    const client = api(b.url);
    const sockets: TestSocket[] = [];
    const sender = await TestSocket.open(b.url, (await registerAndLogin(client)).accessToken);
    sockets.push(sender);
    for (let i = 0; i < 20; i++) {
      const user = await registerAndLogin(client);
      sockets.push(await TestSocket.open(b.url, user.accessToken));
      const id = randomUUID();
      sender.send({
        type: "send",
        id,
        to: { user: user.userId },
        messages: [{ deviceId: 1, type: 3, body: Buffer.from("wake").toString("base64") }],
      });
      expect((await sender.reply(id)).type).toBe("accepted");
    }
    const userKeys = (node: TestNode) => node.actors.activeKeys().filter((key) => key.startsWith("user:"));
    const deadline = Date.now() + 15_000;
    while (userKeys(a).length + userKeys(b).length < 20 && Date.now() < deadline) await Bun.sleep(20);
    expect(userKeys(b).length).toBeGreaterThan(0);

    const script: string =
      byKind("Deployment").spec.template.spec.containers[0].lifecycle.preStop.exec.command[2];
    const hook = Bun.spawn([process.execPath, "-e", script], {
      env: {
        PATH: process.env.PATH ?? "",
        ADMIN_PORT: new URL(b.adminUrl).port,
        NODE_ID: b.config.nodeId,
        ADMIN_TOKEN,
      },
      stdout: "pipe",
      stderr: "pipe",
    });
    const output = `${await new Response(hook.stdout).text()}${await new Response(hook.stderr).text()}`;
    expect(await hook.exited).toBe(0);
    expect(output).toContain('drain: 200 {"nodeId"');
    expect(output).toContain('"status":"drained"');
    // Done means done: the other node no longer has it in its ring, and it holds no user actor.
    expect(userKeys(b)).toEqual([]);
    const until = Date.now() + 15_000;
    while (a.actors.ringMembers().includes(b.config.nodeId) && Date.now() < until) await Bun.sleep(20);
    expect(a.actors.ringMembers()).toEqual([a.config.nodeId]);
    for (const socket of sockets) socket.close();
  });

  test("with a wrong token the hook fails (exit 1) and drains nothing", async () => {
    const script: string =
      byKind("Deployment").spec.template.spec.containers[0].lifecycle.preStop.exec.command[2];
    const hook = Bun.spawn([process.execPath, "-e", script], {
      env: {
        PATH: process.env.PATH ?? "",
        ADMIN_PORT: new URL(a.adminUrl).port,
        NODE_ID: a.config.nodeId,
        ADMIN_TOKEN: "wrong-token-0123456789",
      },
      stdout: "pipe",
      stderr: "pipe",
    });
    const output = await new Response(hook.stdout).text();
    expect(await hook.exited).toBe(1);
    expect(output).toContain("drain: 401");
    expect(a.actors.ringMembers()).toContain(a.config.nodeId);
  });
});
