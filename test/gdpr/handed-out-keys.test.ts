import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { validUpload } from "../keys/fixtures.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * The ids and SHA-256 digests of one-time keys handed out in bundles (handed_out_pre_keys,
 * migration 0015) are personal data the record of processing lists under "public keys": the
 * export counts them as it counts the remaining one-time keys, and the erasure receipt counts them
 * beside the public keys removed.
 */
describe("one-time keys handed out, in the export and the erasure receipt", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** A user with 3 one-time keys of each kind, 2 of each handed out to another user's fetches. */
  const fetchedTwice = async () => {
    const target = await registerAndLogin(client);
    const { upload } = await validUpload(3);
    expect((await client.put("/v1/keys", upload, target.accessToken)).status).toBe(204);
    const reader = await registerAndLogin(client);
    for (let i = 0; i < 2; i++)
      expect((await client.get(`/v1/keys/${target.userId}`, reader.accessToken)).status).toBe(200);
    return target;
  };

  test("the export counts the keys handed out per device and kind", async () => {
    const target = await fetchedTwice();
    const res = await client.get("/v1/me/export", target.accessToken);
    expect(res.status).toBe(200);
    expect(res.body.publicKeys).toEqual([
      expect.objectContaining({
        deviceId: 1,
        oneTimePreKeys: 1,
        oneTimeKyberPreKeys: 1,
        handedOutPreKeys: 2,
        handedOutKyberPreKeys: 2,
      }),
    ]);
  });

  test("the erasure receipt counts them beside the public keys removed", async () => {
    const target = await fetchedTwice();
    const countOf = async (table: string) =>
      rowsOf<{ n: number }>(
        await node.database.db.execute(
          sql`select count(*)::int as n from ${sql.identifier(table)} where user_id = ${target.userId}`,
        ),
      )[0]?.n ?? 0;
    expect(await countOf("handed_out_pre_keys")).toBe(4);
    let publicKeys = 0;
    for (const table of [
      "identity_keys",
      "signed_pre_keys",
      "kyber_last_resort_keys",
      "one_time_pre_keys",
      "one_time_kyber_pre_keys",
    ])
      publicKeys += await countOf(table);
    // 3 current keys, 1 + 1 one-time keys left (and 2 + 2 handed out, counted on their own).
    expect(publicKeys).toBe(5);
    const started = await client.call("DELETE", "/v1/me", {
      token: target.accessToken,
      body: { password: target.password },
    });
    expect(started.status).toBe(202);
    const { erasureId } = started.body as { erasureId: string };
    const deadline = Date.now() + 30_000;
    let status = (await client.get(`/v1/erasures/${erasureId}`)).body;
    while (status.status !== "done" && Date.now() < deadline) {
      await Bun.sleep(50);
      status = (await client.get(`/v1/erasures/${erasureId}`)).body;
    }
    expect(status.status).toBe("done");
    expect(status.receipt.payload.stores.postgres.what).toContain(`public keys (${publicKeys})`);
    expect(status.receipt.payload.stores.postgres.what).toContain("records of one-time keys handed out (4)");
  });
});
