import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, type Reply, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { untilLockWaiters } from "../support/postgres.ts";

/**
 * A login that makes a new device while the account is erased (on another node, whose fence had
 * not reached this one yet, or just after this node's check). The device's creation waited for the
 * account's row, found it gone, and inserted the device all the same: the foreign key refused it
 * and the login answered 500. It is `unauthorized` ("account erased") now, as a login of an erased
 * account answers. The test holds the account's row, lets the login wait for it, deletes the
 * account in that transaction (as the erasure's `postgres` step does) and commits. PostgreSQL:
 * PGlite runs one transaction at a time.
 */
describe("a login racing the erasure of its account (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("is refused 401 with nothing written, not a 500", async () => {
    const bob = await registerAndLogin(client);
    let login: Promise<Reply> | undefined;
    await node.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from accounts where id = ${bob.userId} for share`);
      login = client.post("/v1/sessions", {
        username: bob.username,
        password: bob.password,
        registrationId: 77,
      });
      await untilLockWaiters(node.database.db);
      await tx.execute(sql`delete from accounts where id = ${bob.userId}`);
    });
    const answer = await (login as Promise<Reply>);
    expect(answer.status).toBe(401);
    expect(answer.body.error.code).toBe("unauthorized");
    const [row] = rowsOf<{ n: number }>(
      await node.database.db.execute(
        sql`select count(*)::int as n from devices where user_id = ${bob.userId}`,
      ),
    );
    expect(row?.n).toBe(0);
  });
});
