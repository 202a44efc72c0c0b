import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { chainHash, GENESIS_HASH } from "../../src/audit/chain.ts";
import { type AuditHead, PostgresAuditTrail } from "../../src/audit/service.ts";
import type { AuditEntry } from "../../src/audit/types.ts";
import { validUpload } from "../keys/fixtures.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import { asSuperuser, auditRows, countOf } from "./support.ts";

describe.each(BACKENDS)("audit trail on %s", (backend) => {
  let node: TestNode;
  let client: Api;
  let admin: Api;
  let trail: PostgresAuditTrail;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    admin = api(node.adminUrl);
    trail = new PostgresAuditTrail(node.database.db);
  });
  afterAll(() => node?.teardown());

  const actions = (entries: AuditEntry[]) => entries.map((e) => e.action);

  test("logins, key uploads, group changes and device removal are recorded under pseudonyms, never raw ids", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const carol = await registerAndLogin(client);
    const { upload } = await validUpload(3);
    expect((await client.put("/v1/keys", upload, alice.accessToken)).status).toBe(204);
    const created = await client.post(
      "/v1/groups",
      { name: "team", members: [bob.userId] },
      alice.accessToken,
    );
    expect(created.status).toBe(201);
    const groupId = created.body.groupId;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    const path = `/v1/groups/${groupId}/members`;
    expect((await client.post(path, { userId: carol.userId }, alice.accessToken)).status).toBe(204);
    expect((await client.delete(`${path}/${bob.userId}`, alice.accessToken)).status).toBe(204);
    const second = await client.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      registrationId: 7,
    });
    expect(second.body.deviceId).toBe(2);
    expect((await client.delete("/v1/devices/2", alice.accessToken)).status).toBe(204);

    const pseudonym = await trail.pseudonym(alice.userId);
    expect(pseudonym).toMatch(/^[0-9a-f]{32}$/);
    const mine = await trail.entriesAbout(alice.userId);
    expect(actions(mine)).toEqual([
      "session.login",
      "keys.upload",
      "group.create",
      "group.member.invite",
      "group.member.invite",
      "group.member.remove",
      "session.login",
      "device.remove",
    ]);
    expect(mine[0].details).toEqual({ deviceId: 1, newDevice: true });
    expect(mine[1]).toMatchObject({ subject: pseudonym, actor: pseudonym });
    expect(mine[1].details).toEqual({ deviceId: 1, preKeys: 3, kyberPreKeys: 3 });
    expect(mine[2].details).toEqual({ groupId });
    expect(mine[7].details).toEqual({ deviceId: 2 });
    // Alice acted on Bob and Carol: those entries name them as subject, her as actor.
    const bobs = await trail.entriesAbout(bob.userId);
    expect(actions(bobs)).toEqual([
      "session.login",
      "group.member.invite",
      "group.member.join",
      "group.member.remove",
    ]);
    expect(bobs[1]).toMatchObject({ actor: pseudonym, subject: await trail.pseudonym(bob.userId) });
    expect(actions(await trail.entriesAbout(carol.userId))).toEqual(["session.login", "group.member.invite"]);

    const stored = JSON.stringify(await auditRows(node.database.db));
    for (const secret of [alice, bob, carol].flatMap((u) => [
      u.userId,
      u.username,
      u.password,
      u.refreshToken,
    ])) {
      expect(stored).not.toContain(secret);
    }
  });

  test("the chain verifies, and a row changed behind its back is reported as the first broken link", async () => {
    const user = await registerAndLogin(client);
    const before = await admin.get("/admin/v1/audit/verify", ADMIN_TOKEN);
    expect(before.status).toBe(200);
    expect(before.body.ok).toBe(true);
    expect(before.body.entries).toBeGreaterThan(5);
    expect(before.body.brokenAt).toBeUndefined();

    const [login] = await trail.entriesAbout(user.userId);
    await asSuperuser(
      node.database.db,
      sql`update audit_log set details = '{"deviceId": 9, "newDevice": true}'::jsonb where seq = ${login.seq}`,
    );
    const broken = await admin.get("/admin/v1/audit/verify", ADMIN_TOKEN);
    expect(broken.body).toEqual({ ok: false, entries: expect.any(Number), brokenAt: login.seq });
    expect(await trail.verify()).toMatchObject({ ok: false, brokenAt: login.seq });

    // Putting the original content back restores the chain: the hash covers exactly that content.
    await asSuperuser(
      node.database.db,
      sql`update audit_log set details = ${JSON.stringify(login.details)}::jsonb where seq = ${login.seq}`,
    );
    expect((await trail.verify()).ok).toBe(true);
  });

  test("the database refuses UPDATE, DELETE and TRUNCATE on audit_log, and deletes newer than a prune cut-off", async () => {
    const db = node.database.db;
    const count = () => countOf(db, sql`select count(*)::int from audit_log`);
    // drizzle's query is a thenable, not a Promise: run it so `rejects` sees the failure.
    const run = async (query: ReturnType<typeof sql>) => await db.execute(query);
    const rows = await count();
    expect(rows).toBeGreaterThan(0);
    await expect(run(sql`update audit_log set action = 'x'`)).rejects.toThrow();
    await expect(run(sql`delete from audit_log`)).rejects.toThrow();
    await expect(run(sql`truncate audit_log`)).rejects.toThrow();
    // The retention exception only covers rows older than the cut-off the transaction names.
    await expect(
      db.transaction(async (tx) => {
        await tx.execute(
          sql`select set_config('clearbox.audit_prune', 'on', true), set_config('clearbox.audit_prune_before', '2000-01-01T00:00:00Z', true)`,
        );
        await tx.execute(sql`delete from audit_log`);
      }),
    ).rejects.toThrow();
    expect(await count()).toBe(rows);
    const refused = await run(sql`update audit_log set action = 'x'`).catch((e: Error) => e);
    expect(String((refused as Error & { cause?: Error }).cause?.message ?? refused)).toContain("append-only");
    expect((await trail.verify()).ok).toBe(true);
  });

  test("forgetting a subject unlinks their entries; the entries stay and the chain still verifies", async () => {
    const dave = await registerAndLogin(client);
    const old = await trail.pseudonym(dave.userId);
    expect((await trail.entriesAbout(dave.userId)).length).toBe(1);
    expect(await trail.forgetSubject(dave.userId)).toBe(1);
    expect(await trail.forgetSubject(dave.userId)).toBe(0);
    expect(await trail.entriesAbout(dave.userId)).toEqual([]);
    const listed = await admin.get(`/admin/v1/audit?subject=${dave.userId}`, ADMIN_TOKEN);
    expect(listed.status).toBe(200);
    expect(listed.body.entries).toEqual([]);
    expect(
      await countOf(node.database.db, sql`select count(*)::int from audit_log where subject = ${old}`),
    ).toBe(1);
    expect((await trail.verify()).ok).toBe(true);
    const fresh = await trail.pseudonym(dave.userId);
    expect(fresh).not.toBe(old);
  });

  test("every admin call is recorded with method, route pattern and status, refused ones too, with no token; metrics scrapes are not", async () => {
    const user = await registerAndLogin(client);
    const seqBefore = Math.max(0, ...(await auditRows(node.database.db)).map((r) => Number(r.seq)));
    // Scrapes (every 15 s per node under Prometheus) read counters about nobody: no entry each.
    for (let i = 0; i < 3; i++) expect((await admin.get("/metrics", ADMIN_TOKEN)).status).toBe(200);
    expect((await admin.get(`/admin/v1/audit?subject=${user.userId}&limit=5`, ADMIN_TOKEN)).status).toBe(200);
    expect((await admin.get("/metrics", ADMIN_TOKEN)).status).toBe(200);
    expect((await admin.get("/admin/v1/nothing-here", ADMIN_TOKEN)).status).toBe(404);
    expect((await admin.get("/admin/v1/audit?limit=0", ADMIN_TOKEN)).status).toBe(400);
    const wrong = "wrong-admin-token-0123456789";
    expect((await admin.get("/admin/v1/ropa", wrong)).status).toBe(401);
    expect((await admin.get("/metrics")).status).toBe(401);
    // Refusals are written as one entry when their window closes (here: closed at once).
    await node.adminRefusals.flush();

    const after = await trail.list({ after: seqBefore, limit: 100 });
    expect(after.map((e) => [e.action, e.actor, e.subject])).toEqual([
      ["admin.call", "admin", null],
      ["admin.call", "admin", null],
      ["admin.call", "admin", null],
      ["admin.refused", "system", null],
    ]);
    expect(after.slice(0, 3).map((e) => e.details)).toEqual([
      { method: "GET", route: "/admin/v1/audit", status: 200 },
      { method: "GET", route: "unmatched", status: 404 },
      { method: "GET", route: "/admin/v1/audit", status: 400 },
    ]);
    expect(after[3].details).toMatchObject({
      count: 2,
      reasons: { wrong_token: 1, missing_token: 1 },
      statuses: { "401": 2 },
      addresses: 1,
    });
    const stored = JSON.stringify(await auditRows(node.database.db));
    for (const secret of [ADMIN_TOKEN, wrong, user.userId]) expect(stored).not.toContain(secret);
  });

  test("GET /admin/v1/audit?subject= returns that user's entries only, paged by limit and after", async () => {
    const erin = await registerAndLogin(client);
    const frank = await registerAndLogin(client);
    const { upload } = await validUpload(1);
    expect((await client.put("/v1/keys", upload, erin.accessToken)).status).toBe(204);
    const erinPseudonym = await trail.pseudonym(erin.userId);
    const res = await admin.get(`/admin/v1/audit?subject=${erin.userId}`, ADMIN_TOKEN);
    expect(res.status).toBe(200);
    expect(actions(res.body.entries)).toEqual(["session.login", "keys.upload"]);
    for (const entry of res.body.entries) expect(entry.subject).toBe(erinPseudonym);
    expect(res.body.entries[0].prevHash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(res.body)).not.toContain(erin.userId);
    const franks = await admin.get(`/admin/v1/audit?subject=${frank.userId.toUpperCase()}`, ADMIN_TOKEN);
    expect(actions(franks.body.entries)).toEqual(["session.login"]);

    const page = await admin.get(`/admin/v1/audit?subject=${erin.userId}&limit=1`, ADMIN_TOKEN);
    expect(actions(page.body.entries)).toEqual(["session.login"]);
    const next = await admin.get(
      `/admin/v1/audit?subject=${erin.userId}&limit=1&after=${page.body.nextAfter}`,
      ADMIN_TOKEN,
    );
    expect(actions(next.body.entries)).toEqual(["keys.upload"]);
    const future = await admin.get(`/admin/v1/audit?since=${Date.now() + 60_000}`, ADMIN_TOKEN);
    expect(future.body.entries).toEqual([]);
    const iso = await admin.get(`/admin/v1/audit?since=2000-01-01T00:00:00Z&limit=2`, ADMIN_TOKEN);
    expect(iso.body.entries).toHaveLength(2);
  });

  test("bad query parameters are 400 invalid and create no pseudonym key", async () => {
    const keys = () => countOf(node.database.db, sql`select count(*)::int from audit_subject_keys`);
    const before = await keys();
    for (const query of [
      "limit=0",
      "limit=abc",
      "limit=1001",
      "limit=-1",
      "since=garbage",
      "since=2024-13-45",
      "subject=not-a-uuid",
      "after=x",
    ]) {
      const res = await admin.get(`/admin/v1/audit?${query}`, ADMIN_TOKEN);
      expect({ query, status: res.status, code: res.body?.error?.code }).toEqual({
        query,
        status: 400,
        code: "invalid",
      });
      expect(Object.keys(res.body)).toEqual(["error"]);
    }
    const unknown = await admin.get(`/admin/v1/audit?subject=${crypto.randomUUID()}`, ADMIN_TOKEN);
    expect(unknown.body.entries).toEqual([]);
    expect(await keys()).toBe(before);
  });

  test("the audit and ROPA routes are 401 without the admin token", async () => {
    for (const path of ["/admin/v1/audit", "/admin/v1/audit/verify", "/admin/v1/ropa"]) {
      for (const token of [undefined, "not-the-admin-token-123"]) {
        const res = await admin.get(path, token);
        expect({ path, status: res.status }).toEqual({ path, status: 401 });
        expect(res.body.error.code).toBe("unauthorized");
      }
    }
  });

  test("the tail deleted or rewritten behind the chain's back is found against a head kept outside the database", async () => {
    await registerAndLogin(client);
    const verified = await admin.get("/admin/v1/audit/verify", ADMIN_TOKEN);
    expect(verified.body.ok).toBe(true);
    const head = verified.body.head as AuditHead;
    const [last] = (await trail.list({ after: head.seq - 1, limit: 1 })) as AuditEntry[];
    expect(head).toEqual({ seq: last.seq, hash: last.hash, at: last.at });
    const against = (known: { seq: number; hash: string }) =>
      admin.get(`/admin/v1/audit/verify?seq=${known.seq}&hash=${known.hash}`, ADMIN_TOKEN);
    expect((await against(head)).body).toMatchObject({ ok: true });
    // Entries after the kept head verify against it too.
    await registerAndLogin(client);
    expect((await against(head)).body).toMatchObject({ ok: true });
    // The last entries deleted (no later hash to rewrite): the walk alone cannot tell, the kept head can.
    await asSuperuser(node.database.db, sql`delete from audit_log where seq >= ${head.seq}`);
    expect((await trail.verify()).ok).toBe(true);
    expect((await against(head)).body).toEqual({
      ok: false,
      entries: expect.any(Number),
      brokenAt: head.seq,
    });
    // Appending again after the cut does not hide it.
    await registerAndLogin(client);
    expect((await against(head)).body).toMatchObject({ ok: false, brokenAt: head.seq });
    // The last entry rewritten, hash and all (read without the admin RPC, whose own call is
    // audited after it answers).
    const latest = (await trail.verify()).head as { seq: number; hash: string };
    const [entry] = await trail.list({ after: latest.seq - 1, limit: 1 });
    const forged = chainHash(entry.prevHash, { ...entry, details: { ...entry.details, forged: true } });
    await asSuperuser(
      node.database.db,
      sql`update audit_log set details = ${JSON.stringify({ ...entry.details, forged: true })}::jsonb, hash = ${forged} where seq = ${latest.seq}`,
    );
    expect((await trail.verify()).ok).toBe(true);
    expect((await against(latest)).body).toMatchObject({ ok: false, brokenAt: latest.seq });
    // The whole chain deleted and started again from the genesis hash.
    const whole = (await trail.verify()).head as { seq: number; hash: string };
    await asSuperuser(node.database.db, sql`delete from audit_log`);
    await registerAndLogin(client);
    expect((await trail.verify()).ok).toBe(true);
    expect(await trail.verify(whole)).toMatchObject({ ok: false, brokenAt: whole.seq });
    // Bad parameters are refused before anything is read.
    for (const query of ["seq=1", `hash=${latest.hash}`, `seq=x&hash=${latest.hash}`, "seq=1&hash=xyz"]) {
      const refused = await admin.get(`/admin/v1/audit/verify?${query}`, ADMIN_TOKEN);
      expect({ query, status: refused.status }).toEqual({ query, status: 400 });
    }
  });

  test("deleting the head of the chain behind its back is detected: the anchor is no prune's", async () => {
    expect((await trail.verify()).ok).toBe(true);
    const [first, second] = await trail.list({ limit: 2 });
    expect(first.prevHash).toBe(GENESIS_HASH);
    await asSuperuser(node.database.db, sql`delete from audit_log where seq = ${first.seq}`);
    expect(await trail.verify()).toEqual({ ok: false, entries: 1, brokenAt: second.seq });
  });
});

describe("a kept head against retention's own path", () => {
  let node: TestNode;
  let trail: PostgresAuditTrail;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    trail = new PostgresAuditTrail(node.database.db);
  });
  afterAll(() => node?.teardown());

  test("a head younger than the retention period, removed through the prune path, is found missing", async () => {
    await registerAndLogin(api(node.url));
    const admin = api(node.adminUrl);
    const head = (await admin.get("/admin/v1/audit/verify", ADMIN_TOKEN)).body.head as AuditHead;
    // The head entry's own time, as the chain hashed it (verify answers it as `head.at`).
    const [entry] = await trail.list({ after: head.seq - 1, limit: 1 });
    const kept: AuditHead = { seq: head.seq, hash: head.hash, at: entry.at };
    // What anyone who may delete from audit_log can do without a superuser or a trigger disabled:
    // retention's own path (SET LOCAL clearbox.audit_prune) with a cut-off in the future, which
    // removes the whole chain, the kept head with it, and appends an audit.pruned naming the anchor.
    await trail.prune(new Date(Date.now() + 60_000));
    expect((await trail.verify()).ok).toBe(true);
    // Without its `at`, the kept head cannot tell this from retention, as before.
    expect((await trail.verify({ seq: kept.seq, hash: kept.hash })).ok).toBe(true);
    // With it: retention (AUDIT_RETENTION_DAYS, 365 by default) cannot have removed a head of today.
    const query = `seq=${kept.seq}&hash=${kept.hash}&at=${encodeURIComponent(kept.at as string)}`;
    expect((await admin.get(`/admin/v1/audit/verify?${query}`, ADMIN_TOKEN)).body).toMatchObject({
      ok: false,
      brokenAt: kept.seq,
    });
    expect(await trail.verify(kept)).toMatchObject({ ok: false, brokenAt: kept.seq });
    // Two days on, with one day's retention, the same removal is what retention does: no alarm.
    const later = new PostgresAuditTrail(node.database.db, () => new Date(Date.now() + 2 * 86_400_000), {
      retentionDays: 1,
    });
    expect((await later.verify(kept)).ok).toBe(true);
    expect(head.at).toBe(entry.at);
    // A bad `at`, or one without seq and hash, is refused before anything is read.
    for (const bad of [`seq=${kept.seq}&hash=${kept.hash}&at=yesterday`, `at=${Date.now()}`]) {
      expect((await admin.get(`/admin/v1/audit/verify?${bad}`, ADMIN_TOKEN)).status).toBe(400);
    }
  });
});

describe("audit chain shared by two nodes on one PostgreSQL", () => {
  let a: Awaited<ReturnType<typeof startTestNode>>;
  let b: TestNode;

  beforeAll(async () => {
    a = await startTestNode("postgres", { env: { NODE_ID: "audit-a" } });
    b = await startTestNode("postgres", { database: a.testDatabase, env: { NODE_ID: "audit-b" } });
  });
  afterAll(async () => {
    await b?.teardown();
    await a?.teardown();
  });

  test("concurrent appends from both nodes keep one unbroken chain", async () => {
    const users = await Promise.all([registerAndLogin(api(a.url)), registerAndLogin(api(b.url))]);
    const trails = [new PostgresAuditTrail(a.database.db), new PostgresAuditTrail(b.database.db)];
    const writes = Array.from({ length: 120 }, (_, i) =>
      trails[i % 2].record({
        action: "test.concurrent",
        actor: { user: users[i % 2].userId },
        subject: users[(i + 1) % 2].userId,
        details: { i },
      }),
    );
    const logins = Array.from({ length: 10 }, (_, i) =>
      api(i % 2 ? a.url : b.url).post("/v1/sessions", {
        username: users[i % 2].username,
        password: users[i % 2].password,
        deviceId: 1,
      }),
    );
    await Promise.all([...writes, ...logins]);
    const rows = await auditRows(a.database.db);
    expect(rows.length).toBe(2 + 120 + 10);
    const prevHashes = rows.map((r) => (r as unknown as { prev_hash: string }).prev_hash);
    expect(new Set(prevHashes).size).toBe(rows.length);
    const last = rows[rows.length - 1] as unknown as { seq: number | string; hash: string };
    expect(await trails[1].verify()).toEqual({
      ok: true,
      entries: rows.length,
      head: { seq: Number(last.seq), hash: last.hash, at: expect.any(String) },
    });
    expect((await api(a.adminUrl).get("/admin/v1/audit/verify", ADMIN_TOKEN)).body.ok).toBe(true);
  });
});
