import { expect, test } from "bun:test";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode } from "../support/node.ts";
import { waitUntil } from "../support/ws.ts";

// A failed erasure step waits before its retry (1 s, doubling to 60 s). A node stopping meanwhile
// must not wait that out: the job stays pending and resumes on the next start (resume.test.ts).
test("a node stops while an erasure waits out its retry backoff, leaving the job pending", async () => {
  let failures = 0;
  const node = await startTestNode("pglite", {
    afterErasureStep: (step) => {
      if (step === "history") {
        failures++;
        throw new Error("a store did not answer");
      }
    },
    // Every retry waits the 60 s cap: longer than this test may take.
    erasureRetryBaseMs: 60_000,
  });
  let stopped = false;
  try {
    const http = api(node.url);
    const victim = await registerAndLogin(http);
    const started = await http.call("DELETE", "/v1/me", {
      token: victim.accessToken,
      body: { password: victim.password },
    });
    expect(started.status).toBe(202);
    await waitUntil(() => failures === 1, "the erasure's first attempt to fail");
    expect((await http.get(`/v1/erasures/${started.body.erasureId}`)).body.status).toBe("pending");
    await node.teardown();
    stopped = true;
    expect(failures).toBe(1);
  } finally {
    if (!stopped) await node.teardown();
  }
}, 40_000);
