import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import { flipLastBit, keyRowCounts, validUpload } from "./fixtures.ts";

type Session = Awaited<ReturnType<typeof registerAndLogin>>;

describe.each(BACKENDS)("key directory on %s", (backend) => {
  let node: TestNode;
  let client: Api;
  /** A requester with a fresh rate-limit budget for every test that fetches. */
  let requester: () => Promise<Session>;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    requester = () => registerAndLogin(client);
  });
  afterAll(() => node?.teardown());

  /** Logs another device into `me`'s account. */
  async function anotherDevice(me: Session): Promise<Session> {
    const res = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 77,
    });
    expect(res.status).toBe(201);
    return { ...me, ...res.body };
  }

  test("an upload is stored: the count shows 100 one-time keys of each kind and the bundle echoes the keys", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload();
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 100,
      kyberPreKeys: 100,
    });

    const other = await requester();
    const bundle = await client.get(`/v1/keys/${me.userId}`, other.accessToken);
    expect(bundle.status).toBe(200);
    expect(bundle.body.userId).toBe(me.userId);
    expect(bundle.body.devices).toHaveLength(1);
    const [device] = bundle.body.devices;
    expect(device).toMatchObject({
      deviceId: me.deviceId,
      registrationId: 4242,
      identityKey: upload.identityKey,
      signedPreKey: upload.signedPreKey,
      preKey: upload.preKeys?.[0],
      kyberPreKey: upload.kyberPreKeys?.[0],
    });
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 99,
      kyberPreKeys: 99,
    });
  });

  for (const kind of ["signedPreKey", "kyberPreKey", "kyberPreKeys"] as const) {
    test(`a bad ${kind} signature is 422 bad_signature and stores nothing`, async () => {
      const me = await registerAndLogin(client);
      const before = await keyRowCounts(node);
      const { upload } = await validUpload(3);
      if (kind === "kyberPreKeys") {
        const keys = upload.kyberPreKeys ?? [];
        keys[2] = { ...keys[2], signature: flipLastBit(keys[2].signature) };
      } else {
        upload[kind] = { ...upload[kind], signature: flipLastBit(upload[kind].signature) };
      }
      const res = await client.put("/v1/keys", upload, me.accessToken);
      expect(res.status).toBe(422);
      expect(res.body.error.code).toBe("bad_signature");
      expect(res.body.error.message).toContain(kind);
      expect(await keyRowCounts(node)).toEqual(before);
    });
  }

  test("keys signed by a different identity than the one uploaded are 422 bad_signature", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(1);
    const impostor = IdentityKeyPair.generate();
    const res = await client.put(
      "/v1/keys",
      { ...upload, identityKey: Buffer.from(impostor.publicKey.serialize()).toString("base64") },
      me.accessToken,
    );
    expect(res.status).toBe(422);
    expect(res.body.error.code).toBe("bad_signature");
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 0,
      kyberPreKeys: 0,
    });
  });

  test("malformed uploads are 400 invalid and store nothing", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(2);
    const ec = upload.signedPreKey.publicKey;
    const shortEc = Buffer.from(ec, "base64").subarray(0, 32).toString("base64");
    const wrongType = Buffer.from(ec, "base64");
    wrongType[0] = 0x06;
    const preKeys = upload.preKeys ?? [];
    const kyberPreKeys = upload.kyberPreKeys ?? [];
    const malformed: unknown[] = [
      {},
      { ...upload, identityKey: "not base64!!" },
      { ...upload, identityKey: `${upload.identityKey.slice(0, -4)}====` },
      { ...upload, identityKey: shortEc },
      { ...upload, identityKey: wrongType.toString("base64") },
      { ...upload, signedPreKey: { ...upload.signedPreKey, publicKey: shortEc } },
      { ...upload, signedPreKey: { ...upload.signedPreKey, signature: "AAAA" } },
      { ...upload, signedPreKey: { ...upload.signedPreKey, keyId: "7" } },
      { ...upload, signedPreKey: { ...upload.signedPreKey, keyId: -1 } },
      { ...upload, signedPreKey: { ...upload.signedPreKey, keyId: 1.5 } },
      { ...upload, signedPreKey: { ...upload.signedPreKey, extra: 1 } },
      { ...upload, kyberPreKey: { ...upload.kyberPreKey, publicKey: ec } },
      { ...upload, preKeys: Array.from({ length: 101 }, (_, i) => ({ ...preKeys[0], keyId: i })) },
      { ...upload, kyberPreKeys: Array.from({ length: 101 }, (_, i) => ({ ...kyberPreKeys[0], keyId: i })) },
      { ...upload, preKeys: [preKeys[0], { ...preKeys[1], keyId: preKeys[0].keyId }] },
      { ...upload, preKeys: [{ ...preKeys[0], publicKey: upload.kyberPreKey.publicKey }] },
      { ...upload, userId: me.userId },
      { ...upload, deviceId: 2 },
      [],
      null,
    ];
    const before = await keyRowCounts(node);
    for (const body of malformed) {
      const res = await client.put("/v1/keys", body, me.accessToken);
      expect({ body, status: res.status }).toEqual({ body, status: 400 });
      expect(res.body.error.code).toBe("invalid");
    }
    const raw = await client.call("PUT", "/v1/keys", { raw: '{"identityKey": ', token: me.accessToken });
    expect(raw.status).toBe(400);
    expect(await keyRowCounts(node)).toEqual(before);
  });

  test("key routes refuse a request without a valid bearer token with 401", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(1);
    expect((await client.put("/v1/keys", upload)).status).toBe(401);
    expect((await client.put("/v1/keys", upload, `${me.accessToken}x`)).status).toBe(401);
    expect((await client.get("/v1/keys/count")).status).toBe(401);
    expect((await client.get(`/v1/keys/${me.userId}`)).status).toBe(401);
  });

  test("another user's device uploads only to its own directory entry, never to yours", async () => {
    const victim = await registerAndLogin(client);
    const attacker = await registerAndLogin(client);
    const { upload: mine } = await validUpload(1);
    expect((await client.put("/v1/keys", mine, victim.accessToken)).status).toBe(204);
    const { upload: forged } = await validUpload(1);
    // The body cannot name a target account: the route only ever writes the caller's own device.
    expect(
      (await client.put("/v1/keys", { ...forged, userId: victim.userId }, attacker.accessToken)).status,
    ).toBe(400);
    expect((await client.put("/v1/keys", forged, attacker.accessToken)).status).toBe(204);
    const reader = await requester();
    const victimBundle = await client.get(`/v1/keys/${victim.userId}`, reader.accessToken);
    expect(victimBundle.body.devices).toHaveLength(1);
    expect(victimBundle.body.devices[0].identityKey).toBe(mine.identityKey);
    const attackerBundle = await client.get(`/v1/keys/${attacker.userId}`, reader.accessToken);
    expect(attackerBundle.body.devices[0].identityKey).toBe(forged.identityKey);
  });

  test("50 concurrent bundle fetches consume 50 distinct one-time keys of each kind", async () => {
    const target = await registerAndLogin(client);
    const { upload } = await validUpload(100);
    expect((await client.put("/v1/keys", upload, target.accessToken)).status).toBe(204);
    // Three requesting devices, so 50 fetches stay within the per-target budget of 20 each.
    const first = await requester();
    const devices = [first, await anotherDevice(first), await anotherDevice(first)];
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        client.get(`/v1/keys/${target.userId}`, devices[i % devices.length].accessToken),
      ),
    );
    expect(replies.map((r) => r.status)).toEqual(Array(50).fill(200));
    const ec = replies.map((r) => r.body.devices[0].preKey.keyId);
    const kyber = replies.map((r) => r.body.devices[0].kyberPreKey.keyId);
    expect(new Set(ec).size).toBe(50);
    expect(new Set(kyber).size).toBe(50);
    const uploadedKyber = new Set((upload.kyberPreKeys ?? []).map((k) => k.keyId));
    expect(kyber.every((id) => uploadedKyber.has(id))).toBe(true);
    expect((await client.get("/v1/keys/count", target.accessToken)).body).toEqual({
      preKeys: 50,
      kyberPreKeys: 50,
    });
  });

  test("when one-time keys run out, preKey is null and the last-resort Kyber key is returned", async () => {
    const target = await registerAndLogin(client);
    const { upload } = await validUpload(2);
    expect((await client.put("/v1/keys", upload, target.accessToken)).status).toBe(204);
    const reader = await requester();
    const fetchDevice = async () =>
      (await client.get(`/v1/keys/${target.userId}`, reader.accessToken)).body.devices[0];
    const taken = [await fetchDevice(), await fetchDevice()];
    expect(taken.map((d) => d.preKey.keyId).sort()).toEqual(
      (upload.preKeys ?? []).map((k) => k.keyId).sort(),
    );
    expect(taken.map((d) => d.kyberPreKey.keyId).sort()).toEqual(
      (upload.kyberPreKeys ?? []).map((k) => k.keyId).sort(),
    );
    for (let i = 0; i < 2; i++) {
      const exhausted = await fetchDevice();
      expect(exhausted.preKey).toBeNull();
      expect(exhausted.kyberPreKey).toEqual(upload.kyberPreKey);
      expect(exhausted.signedPreKey).toEqual(upload.signedPreKey);
    }
    expect((await client.get("/v1/keys/count", target.accessToken)).body).toEqual({
      preKeys: 0,
      kyberPreKeys: 0,
    });
  });

  test("the 21st fetch of one user's bundle by one device within 10 minutes is 429 with Retry-After", async () => {
    const target = await registerAndLogin(client);
    const { upload } = await validUpload(30);
    expect((await client.put("/v1/keys", upload, target.accessToken)).status).toBe(204);
    const reader = await requester();
    for (let i = 0; i < 20; i++) {
      expect((await client.get(`/v1/keys/${target.userId}`, reader.accessToken)).status).toBe(200);
    }
    const refused = await client.get(`/v1/keys/${target.userId}`, reader.accessToken);
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    const retryAfter = Number(refused.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(600);
    // A refused fetch consumes no key; other requesters are not affected.
    expect((await client.get("/v1/keys/count", target.accessToken)).body).toEqual({
      preKeys: 10,
      kyberPreKeys: 10,
    });
    const other = await requester();
    expect((await client.get(`/v1/keys/${target.userId}`, other.accessToken)).status).toBe(200);
  });

  test("an account's devices together fetch one user's bundle at most 80 times in 10 minutes", async () => {
    const target = await registerAndLogin(client);
    const { upload } = await validUpload(100);
    expect((await client.put("/v1/keys", upload, target.accessToken)).status).toBe(204);
    // Five devices of one account, each within its own budget of 20: a device costs only a login.
    const first = await requester();
    const devices = [first, ...(await Promise.all(Array.from({ length: 4 }, () => anotherDevice(first))))];
    const statuses: number[] = [];
    for (const device of devices) {
      for (let i = 0; i < 20; i++) {
        statuses.push((await client.get(`/v1/keys/${target.userId}`, device.accessToken)).status);
      }
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(80);
    expect(statuses.filter((s) => s === 429)).toHaveLength(20);
    // The refused fetches took no key: 20 of each kind are left for everyone else.
    expect((await client.get("/v1/keys/count", target.accessToken)).body).toEqual({
      preKeys: 20,
      kyberPreKeys: 20,
    });
    expect((await client.get(`/v1/keys/${target.userId}`, (await requester()).accessToken)).status).toBe(200);
  });

  test("a fetch lists every device with keys, one bundle each, and skips devices without keys", async () => {
    const me = await registerAndLogin(client);
    const second = await anotherDevice(me);
    await anotherDevice(me); // a third device that never uploads keys
    for (const device of [me, second]) {
      expect((await client.put("/v1/keys", (await validUpload(1)).upload, device.accessToken)).status).toBe(
        204,
      );
    }
    const reader = await requester();
    const res = await client.get(`/v1/keys/${me.userId}`, reader.accessToken);
    expect(res.body.devices.map((d: any) => d.deviceId)).toEqual([me.deviceId, second.deviceId]);
    expect(res.body.devices.every((d: any) => d.preKey !== null)).toBe(true);
  });

  test("removing a device removes its keys from the directory", async () => {
    const me = await registerAndLogin(client);
    const second = await anotherDevice(me);
    expect((await client.put("/v1/keys", (await validUpload(5)).upload, second.accessToken)).status).toBe(
      204,
    );
    const before = await keyRowCounts(node);
    expect((await client.delete(`/v1/devices/${second.deviceId}`, me.accessToken)).status).toBe(204);
    const after = await keyRowCounts(node);
    expect(before.one_time_pre_keys - after.one_time_pre_keys).toBe(5);
    expect(before.identity_keys - after.identity_keys).toBe(1);
    const reader = await requester();
    expect((await client.get(`/v1/keys/${me.userId}`, reader.accessToken)).body.devices).toEqual([]);
  });

  test("uploading a new identity key discards the one-time keys issued under the old one", async () => {
    const me = await registerAndLogin(client);
    expect((await client.put("/v1/keys", (await validUpload(10)).upload, me.accessToken)).status).toBe(204);
    const { upload } = await validUpload(0);
    const { preKeys: _p, kyberPreKeys: _k, ...withoutLists } = upload;
    expect((await client.put("/v1/keys", withoutLists, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 0,
      kyberPreKeys: 0,
    });
  });

  test("a re-upload with the same identity replaces the given one-time list and keeps the other", async () => {
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(10);
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    const { kyberPreKeys: _k, ...ecOnly } = { ...upload, preKeys: (upload.preKeys ?? []).slice(0, 3) };
    expect((await client.put("/v1/keys", ecOnly, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 3,
      kyberPreKeys: 10,
    });
  });

  test("a retried upload of the same one-time list does not put back the keys handed out in between", async () => {
    // A client whose upload's answer was lost sends the same body again; fetches took keys meanwhile.
    const me = await registerAndLogin(client);
    const { upload } = await validUpload(5);
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    const handedOut = { preKeys: new Set<number>(), kyberPreKeys: new Set<number>() };
    const fetchOne = async () => {
      const reader = await requester();
      const bundle = await client.get(`/v1/keys/${me.userId}`, reader.accessToken);
      expect(bundle.status).toBe(200);
      const [device] = bundle.body.devices;
      return device as { preKey: { keyId: number } | null; kyberPreKey: { keyId: number } };
    };
    for (let i = 0; i < 2; i++) {
      const device = await fetchOne();
      handedOut.preKeys.add(device.preKey?.keyId ?? -1);
      handedOut.kyberPreKeys.add(device.kyberPreKey.keyId);
    }
    expect((await client.put("/v1/keys", upload, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 3,
      kyberPreKeys: 3,
    });
    // The rest of the list is handed out once each, none of the first two again, then none at all.
    for (let i = 0; i < 3; i++) {
      const device = await fetchOne();
      const preKeyId = device.preKey?.keyId ?? -1;
      expect(handedOut.preKeys.has(preKeyId)).toBe(false);
      expect(handedOut.kyberPreKeys.has(device.kyberPreKey.keyId)).toBe(false);
      handedOut.preKeys.add(preKeyId);
      handedOut.kyberPreKeys.add(device.kyberPreKey.keyId);
    }
    expect(handedOut.preKeys.size).toBe(5);
    expect((await fetchOne()).preKey).toBeNull();
    // A new list with fresh keys is stored whole, a key id handed out before included when its key is new.
    const { upload: fresh } = await validUpload(5);
    expect((await client.put("/v1/keys", fresh, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/keys/count", me.accessToken)).body).toEqual({
      preKeys: 5,
      kyberPreKeys: 5,
    });
  });

  test("an unknown user is 404, a malformed user id 400, and a user without keys an empty list", async () => {
    const reader = await requester();
    const unknown = await client.get(`/v1/keys/${crypto.randomUUID()}`, reader.accessToken);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe("not_found");
    expect((await client.get("/v1/keys/not-a-uuid", reader.accessToken)).status).toBe(400);
    const keyless = await registerAndLogin(client);
    const empty = await client.get(`/v1/keys/${keyless.userId}`, reader.accessToken);
    expect(empty.status).toBe(200);
    expect(empty.body).toEqual({ userId: keyless.userId, devices: [] });
  });
});
