import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * Device ids are reused (the lowest free one), and a token names its device by id and token
 * generation. A removed device's access token must stay dead when a new device gets its id: it
 * would otherwise speak and listen as the new device (a removed stolen phone, then a new laptop).
 */
describe("a removed device's access token, once its id is given to a new device", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("is refused over HTTP, on a WebSocket upgrade and in an auth frame; the new device's own token works", async () => {
    const me = await registerAndLogin(client);
    const login = () =>
      client.post("/v1/sessions", { username: me.username, password: me.password, registrationId: 77 });
    const stolen = await login();
    expect(stolen.status).toBe(201);
    const oldId = stolen.body.deviceId;
    expect((await client.delete(`/v1/devices/${oldId}`, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/devices", stolen.body.accessToken)).status).toBe(401);
    const laptop = await login();
    expect(laptop.status).toBe(201);
    expect(laptop.body.deviceId).toBe(oldId);

    expect((await client.get("/v1/devices", stolen.body.accessToken)).status).toBe(401);
    await expect(TestSocket.open(node.url, stolen.body.accessToken)).rejects.toThrow();
    const socket = await TestSocket.open(node.url, laptop.body.accessToken);
    socket.send({ type: "auth", token: stolen.body.accessToken });
    const answer = await socket.next((f) => f.type === "auth.ok" || f.type === "error", 10_000);
    expect(answer).toMatchObject({ type: "error", code: "unauthorized" });
    expect((await client.get("/v1/devices", laptop.body.accessToken)).status).toBe(200);
    socket.ws.close();
  });
});
