import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { OTHER_USER } from "../../src/gdpr/export.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/** Every row of `table`, as one string. */
async function tableDump(node: TestNode, table: string): Promise<string> {
  const result: any = await node.database.db.execute(sql.raw(`select * from "${table}"`));
  return JSON.stringify(result.rows ?? result);
}

async function waitFor<T>(check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(100);
  }
}

/** Issue 12 item 6: exports and receipts never carry a pseudonym that links a person's entries. */
describe.each(BACKENDS)("erased pseudonyms stay unlinkable on %s", (backend) => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode(backend);
  });
  afterAll(() => node?.teardown());

  test("an export shows other people without their pseudonym; a receipt's subject appears nowhere else", async () => {
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    // B invites A (B is the actor of an entry about A); A invites B (B is the subject of A's entry).
    expect((await http.post("/v1/groups", { name: "b's", members: [a.userId] }, b.accessToken)).status).toBe(
      201,
    );
    expect((await http.post("/v1/groups", { name: "a's", members: [b.userId] }, a.accessToken)).status).toBe(
      201,
    );
    const pseudonymOfB = await node.audit.pseudonym(b.userId);
    const pseudonymOfA = await node.audit.pseudonym(a.userId);
    // The admin's view has B's pseudonym in entries about A: the export must not.
    expect(await tableDump(node, "audit_log")).toContain(pseudonymOfB);

    const exportA = async () => (await http.get("/v1/me/export", a.accessToken)).body;
    const archive = await exportA();
    const adds = archive.audit.filter((e: { action: string }) => e.action === "group.member.invite");
    expect(adds.length).toBe(2);
    // Each kind of place another person's pseudonym sat: actor (B added A) and subject (A added B).
    expect(adds.map((e: { actor: string; subject: string }) => [e.actor, e.subject]).sort()).toEqual(
      [
        [OTHER_USER, pseudonymOfA],
        [pseudonymOfA, OTHER_USER],
      ].sort(),
    );
    expect(JSON.stringify(archive)).not.toContain(pseudonymOfB);

    // B is erased: the receipt's subject is neither B's pseudonym nor anything stored elsewhere.
    const started = await fetch(`${node.adminUrl}/admin/v1/users/${b.userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(started.status).toBe(202);
    const { erasureId } = (await started.json()) as { erasureId: string };
    const done = await waitFor(async () => {
      const res = await http.get(`/v1/erasures/${erasureId}`);
      return res.body.status === "done" ? res.body : undefined;
    });
    const subject: string = done.receipt.payload.subject;
    expect(subject).toMatch(/^[0-9a-f]{32}$/);
    expect(subject).not.toBe(pseudonymOfB);
    expect(JSON.stringify(done.receipt)).not.toContain(pseudonymOfB);
    expect(await tableDump(node, "audit_log")).not.toContain(subject);
    const afterwards = await exportA();
    expect(JSON.stringify(afterwards)).not.toContain(subject);
    expect(JSON.stringify(afterwards)).not.toContain(pseudonymOfB);
    const adminAudit = await fetch(`${node.adminUrl}/admin/v1/audit?limit=1000`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(await adminAudit.text()).not.toContain(subject);
  });
});
