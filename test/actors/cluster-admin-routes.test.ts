import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Elysia } from "elysia";
import {
  type ActorSystem,
  type ClusterView,
  createActorNode,
  InMemoryMembership,
  InMemoryTransport,
  MembershipHub,
  TransportHub,
} from "../../actors/index.ts";
import { clusterAdminRoutes } from "../../src/cluster/index.ts";
import { DomainError, errorReply } from "../../src/http/errors.ts";

// Two nodes sharing in-memory hubs: the routes are what is under test, not the services.
describe("cluster admin routes", () => {
  const membershipHub = new MembershipHub();
  const transportHub = new TransportHub();
  const nodes: ActorSystem[] = [];
  let app: Elysia;

  beforeAll(async () => {
    for (const nodeId of ["node-a", "node-b"]) {
      const node = createActorNode({
        nodeId,
        address: `${nodeId}:8080`,
        membership: new InMemoryMembership(nodeId, membershipHub),
        transport: new InMemoryTransport(nodeId, transportHub),
        connections: () => 7,
      });
      node.register("rec", () => ({ receive: () => nodeId }));
      await node.start();
      nodes.push(node);
    }
    for (let i = 0; i < 20; i++) await nodes[0].ask(`rec:${i}`, "hi");
    // The same error mapping the admin listener applies.
    app = new Elysia()
      .onError(({ error, set }) => {
        if (error instanceof DomainError) {
          const reply = errorReply(error);
          set.status = reply.status;
          return reply.body;
        }
      })
      .use(clusterAdminRoutes(nodes[0])) as unknown as Elysia;
  });

  afterAll(async () => {
    await Promise.all(nodes.map((node) => node.stop()));
  });

  test("GET /admin/v1/cluster lists members with actor and connection counts and the ring size", async () => {
    const response = await app.handle(new Request("http://localhost/admin/v1/cluster"));
    expect(response.status).toBe(200);
    const body = (await response.json()) as ClusterView;
    expect(body.self).toBe("node-a");
    expect(body.nodes.map((n) => n.nodeId)).toEqual(["node-a", "node-b"]);
    expect(body.nodes[0]).toMatchObject({ address: "node-a:8080", connections: 7 });
    const actors = body.nodes.reduce((sum, n) => sum + n.actors, 0);
    expect(actors).toBe(20);
    expect(body.ring.vnodes).toBe(1024);
  });

  test("POST /admin/v1/nodes/:nodeId/drain answers 202 and the named node hands its actors off", async () => {
    const response = await app.handle(
      new Request("http://localhost/admin/v1/nodes/node-b/drain", { method: "POST" }),
    );
    expect(response.status).toBe(202);
    const deadline = Date.now() + 15_000;
    while ((nodes[1].activeKeys().length > 0 || nodes[0].ringMembers().length > 1) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(nodes[1].activeKeys()).toEqual([]);
    expect(nodes[0].ringMembers()).toEqual(["node-a"]);
  });

  test("?wait=true for another node is 400 invalid and drains nothing", async () => {
    const before = nodes[0].ringMembers();
    const response = await app.handle(
      new Request("http://localhost/admin/v1/nodes/node-b/drain?wait=true", { method: "POST" }),
    );
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("invalid");
    expect(nodes[0].ringMembers()).toEqual(before);
  });

  test("?wait=maybe is refused by validation and drains nothing", async () => {
    const response = await app.handle(
      new Request("http://localhost/admin/v1/nodes/node-a/drain?wait=maybe", { method: "POST" }),
    );
    // This bare app leaves validation to Elysia (422); the admin listener maps it to 400 invalid.
    expect(response.status).toBe(422);
    expect(nodes[0].ringMembers()).toContain("node-a");
  });

  test("draining an unknown node is 404 not_found", async () => {
    const response = await app.handle(
      new Request("http://localhost/admin/v1/nodes/nope/drain", { method: "POST" }),
    );
    expect(response.status).toBe(404);
    const body = (await response.json()) as { error: { code: string } };
    expect(body.error.code).toBe("not_found");
  });
});
