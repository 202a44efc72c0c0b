import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { hostname, type NetworkInterfaceInfo, networkInterfaces } from "node:os";
import { advertisedAddress } from "../../src/http/listener.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

/** One interface entry as os.networkInterfaces() lists it (only the fields advertisedAddress reads matter). */
function nic(address: string, family: "IPv4" | "IPv6", internal = false): NetworkInterfaceInfo {
  const base = { address, netmask: "", mac: "00:00:00:00:00:00", internal, cidr: null };
  return family === "IPv4" ? { ...base, family } : { ...base, family, scopeid: 0 };
}

const MACHINE = {
  lo: [nic("127.0.0.1", "IPv4", true), nic("::1", "IPv6", true)],
  eth0: [nic("fe80::1", "IPv6"), nic("fd00::2", "IPv6"), nic("192.0.2.2", "IPv4")],
};

describe("the address a node advertises to the cluster view", () => {
  test("a wildcard bind advertises the machine's external address of its family, IPv6 bracketed", () => {
    expect(advertisedAddress("0.0.0.0", 8080, MACHINE)).toBe("192.0.2.2:8080");
    expect(advertisedAddress("::", 8080, MACHINE)).toBe("[fd00::2]:8080");
    expect(advertisedAddress("::", 8080, { eth0: [nic("fe80::1", "IPv6"), nic("192.0.2.2", "IPv4")] })).toBe(
      "192.0.2.2:8080",
    );
  });

  test("a specific bind is advertised as bound; an IPv6 host is bracketed so the port reads apart", () => {
    expect(advertisedAddress("10.1.2.3", 8080, MACHINE)).toBe("10.1.2.3:8080");
    expect(advertisedAddress("::1", 8080, MACHINE)).toBe("[::1]:8080");
    expect(advertisedAddress("clearbox-1", 8080, MACHINE)).toBe("clearbox-1:8080");
  });

  test("a machine without an external interface advertises its host name", () => {
    const address = advertisedAddress("0.0.0.0", 8080, { lo: MACHINE.lo });
    expect(address).not.toStartWith("0.0.0.0");
    expect(address).not.toStartWith("127.");
    expect(address).toEndWith(":8080");
  });
});

describe("GET /admin/v1/cluster of a node bound to every interface (PUBLIC_HOST=0.0.0.0)", () => {
  let node: TestNode;
  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { PUBLIC_HOST: "0.0.0.0" } });
  });
  afterAll(async () => {
    await node?.teardown();
  });

  test("shows an address of this machine other nodes can reach, not 0.0.0.0", async () => {
    const res = await fetch(`${node.adminUrl}/admin/v1/cluster`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(200);
    const view = (await res.json()) as { self: string; nodes: { nodeId: string; address: string }[] };
    const self = view.nodes.find((n) => n.nodeId === view.self);
    const host = self?.address.slice(0, self.address.lastIndexOf(":")).replace(/^\[|\]$/g, "");
    expect(host).not.toBe("0.0.0.0");
    const external = Object.values(networkInterfaces())
      .flatMap((list) => list ?? [])
      .filter((info) => !info.internal)
      .map((info) => info.address);
    // A machine with no external interface advertises its host name.
    expect(external.length > 0 ? external : [hostname()]).toContain(String(host));
  });
});
