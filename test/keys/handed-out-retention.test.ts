import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { HANDED_OUT_PRE_KEY_DAYS } from "../../src/keys/service.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { waitUntil } from "../support/ws.ts";
import { validUpload } from "./fixtures.ts";

/**
 * `handed_out_pre_keys` (migration 0015) kept a row for every one-time key ever handed out, until
 * the device went. The retention pass now removes those handed out more than
 * HANDED_OUT_PRE_KEY_DAYS ago (no retried upload comes that late), and an erasure's receipt counts
 * the ones the account still had.
 */
describe("records of handed-out one-time keys", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const recordsOf = async (userId: string) =>
    rowsOf<{ kind: string; key_id: number }>(
      await node.database.db.execute(
        sql`select kind, key_id from handed_out_pre_keys where user_id = ${userId} order by kind, key_id`,
      ),
    );

  test("the retention pass removes those older than HANDED_OUT_PRE_KEY_DAYS and keeps the rest", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(3);
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    const reader = await registerAndLogin(client);
    const fetched: { preKey: { keyId: number }; kyberPreKey: { keyId: number } }[] = [];
    for (let i = 0; i < 2; i++) {
      const bundle = await client.get(`/v1/keys/${me.userId}`, reader.accessToken);
      expect(bundle.status).toBe(200);
      fetched.push(bundle.body.devices[0]);
    }
    expect(await recordsOf(me.userId)).toHaveLength(4);
    // The first fetch's two keys: handed out a day more than the horizon ago.
    const [first, second] = fetched;
    await node.database.db.execute(sql`
      update handed_out_pre_keys set handed_out_at = now() - make_interval(days => ${HANDED_OUT_PRE_KEY_DAYS + 1})
      where user_id = ${me.userId}
        and ((kind = 'ec' and key_id = ${first?.preKey.keyId}) or (kind = 'kyber' and key_id = ${first?.kyberPreKey.keyId}))`);

    const report = await node.retention.runOnce();
    expect(report.handedOutPreKeys).toBe(2);
    expect(await recordsOf(me.userId)).toEqual([
      { kind: "ec", key_id: second?.preKey.keyId as number },
      { kind: "kyber", key_id: second?.kyberPreKey.keyId as number },
    ]);
    // Nothing else of the device went: its last one-time keys and its bundle are as they were.
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 1,
      kyberPreKeys: 1,
    });
    // A second pass has nothing more to remove.
    expect((await node.retention.runOnce()).handedOutPreKeys).toBe(0);
  });

  test("an erasure's receipt counts the account's records of handed-out keys", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(3);
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    const reader = await registerAndLogin(client);
    for (let i = 0; i < 3; i++)
      expect((await client.get(`/v1/keys/${me.userId}`, reader.accessToken)).status).toBe(200);
    expect(await recordsOf(me.userId)).toHaveLength(6);
    const started = await client.call("DELETE", "/v1/me", {
      token: me.accessToken,
      body: { password: me.password },
    });
    expect(started.status).toBe(202);
    let receipt: { payload: { stores: { postgres: { removed: number; what: string } } } } | undefined;
    await waitUntil(
      async () => {
        const res = await client.get(`/v1/erasures/${started.body.erasureId}`);
        receipt = res.body.status === "done" ? res.body.receipt : undefined;
        return receipt !== undefined;
      },
      "the erasure to finish",
      60_000,
    );
    expect(receipt?.payload.stores.postgres.what).toContain("records of one-time keys handed out (6)");
    expect(await recordsOf(me.userId)).toEqual([]);
  }, 90_000);
});
