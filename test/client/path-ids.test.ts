/**
 * Ids that go into a URL path are checked by the SDK before any request: Eden puts path parameters
 * into the URL as they are, so `http.erasure("../../admin")` asked the server for `GET /admin`,
 * and `x?y` turned the rest of the path into a query. The values come from callers and from the
 * server's own answers (an erasure id, a group's members, an invitation's group), so a hostile
 * server could steer the client's next authenticated request. Here a real Bun HTTP server records
 * every request it gets; no ClearBox node runs.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { ClearBoxHttp, type SessionTokens } from "../../src/client/index.ts";

const USER = "7c9e6679-7425-40de-944b-e07c4f29a3b1";
const GROUP = "0f8fad5b-d9cb-469f-a165-70867728950e";
const HOSTILE = ["../../admin", "x?y", `${USER}/../../admin`, "a#b", "", "..", "%2e%2e"];

describe("ids in URL paths", () => {
  let server: Server<undefined>;
  const requests: string[] = [];

  beforeAll(() => {
    server = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch(request) {
        const url = new URL(request.url);
        requests.push(`${request.method} ${url.pathname}${url.search}`);
        if (url.pathname === "/v1/sessions/refresh") {
          return Response.json(
            { userId: USER, deviceId: 1, accessToken: "a.b.c", refreshToken: "r2", expiresIn: 900 },
            { status: 201 },
          );
        }
        return Response.json({ erasureId: USER, status: "pending" });
      },
    });
  });
  afterAll(() => server?.stop(true));

  function loggedIn(): ClearBoxHttp {
    let tokens: SessionTokens | undefined = {
      userId: USER,
      deviceId: 1,
      accessToken: "a.b.c",
      refreshToken: "r1",
      expiresIn: 900,
    };
    return new ClearBoxHttp(`http://127.0.0.1:${server.port}`, {
      tokens: () => tokens,
      setTokens: (next) => {
        tokens = next;
      },
    });
  }

  test("a caller's or server's id that is not a UUID is refused with a RangeError, and nothing is sent", async () => {
    const http = loggedIn();
    requests.length = 0;
    for (const bad of HOSTILE) {
      const calls: Array<() => Promise<unknown>> = [
        () => http.erasure(bad),
        () => http.fetchBundle(bad),
        () => http.user(bad),
        () => http.group(bad),
        () => http.addGroupMember(bad, USER),
        () => http.removeGroupMember(bad, USER),
        () => http.removeGroupMember(GROUP, bad),
        () => http.acceptInvitation(bad),
        () => http.declineInvitation(bad),
        () => http.block(bad),
        () => http.unblock(bad),
      ];
      for (const call of calls) {
        const error = await call().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(RangeError);
        expect((error as Error).message).toMatch(/^(erasureId|userId|groupId) must be a UUID$/);
      }
    }
    for (const badDevice of [0, 128, 1.5, Number.NaN, "1/../../admin" as unknown as number]) {
      await expect(http.removeDevice(badDevice)).rejects.toBeInstanceOf(RangeError);
    }
    // Not even the token refresh a first bearer call makes went out.
    expect(requests).toEqual([]);
  });

  test("a UUID in either case goes through as it is", async () => {
    const http = loggedIn();
    requests.length = 0;
    await http.erasure(USER.toUpperCase());
    await http.block(USER);
    await http.removeGroupMember(GROUP, USER);
    await http.removeDevice(2);
    expect(requests).toEqual([
      `GET /v1/erasures/${USER.toUpperCase()}`,
      "POST /v1/sessions/refresh",
      `POST /v1/blocks/${USER}`,
      `DELETE /v1/groups/${GROUP}/members/${USER}`,
      "DELETE /v1/devices/2",
    ]);
  });
});
