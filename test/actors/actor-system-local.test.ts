import { afterEach, describe, expect, test } from "bun:test";
import {
  type ActorBehavior,
  ActorStoppedError,
  type ActorSystem,
  createActorNode,
  MailboxFullError,
  UnknownActorKindError,
} from "../../actors/index.ts";

const systems: ActorSystem[] = [];

async function singleNode(
  register: (system: ActorSystem) => void,
  options: { idleTimeoutMs?: number; mailboxCapacity?: number } = {},
): Promise<ActorSystem> {
  const system = createActorNode({ nodeId: "solo", ...options });
  register(system);
  await system.start();
  systems.push(system);
  return system;
}

function until(check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (check()) resolve();
      else if (Date.now() - started > timeoutMs) reject(new Error("condition not met in time"));
      else setTimeout(poll, 5);
    };
    poll();
  });
}

afterEach(async () => {
  await Promise.all(systems.splice(0).map((system) => system.stop()));
});

describe("Actor on a single embedded node", () => {
  test("1M messages through one actor arrive in order", async () => {
    let expected = 0;
    let outOfOrder = 0;
    const system = await singleNode((s) =>
      s.register("counter", () => ({
        receive(message: unknown) {
          if (message !== expected) outOfOrder++;
          expected++;
        },
      })),
    );
    const total = 1_000_000;
    const started = performance.now();
    for (let i = 0; i < total; i++) {
      // The bounded mailbox pushes back: wait for room instead of dropping.
      await system.tell("counter:1", i).catch(async (error: unknown) => {
        if (!(error instanceof MailboxFullError)) throw error;
        while (true) {
          await new Promise((resolve) => setImmediate(resolve));
          try {
            await system.tell("counter:1", i);
            return;
          } catch (again) {
            if (!(again instanceof MailboxFullError)) throw again;
          }
        }
      });
    }
    await until(() => expected === total, 30_000);
    expect(outOfOrder).toBe(0);
    expect(expected).toBe(total);
    console.log(`1M in-order messages in ${Math.round(performance.now() - started)} ms`);
  }, 60_000);

  test("a throwing handler does not stop the actor's next message, and the failure is reported", async () => {
    const seen: string[] = [];
    const failures: string[] = [];
    const system = createActorNode({
      nodeId: "solo",
      onFailure: (key, error) => failures.push(`${key}:${(error as Error).message}`),
    });
    system.register("fragile", () => ({
      receive(message: unknown) {
        if (message === "boom") throw new Error("bad message");
        seen.push(message as string);
      },
    }));
    await system.start();
    systems.push(system);
    await system.tell("fragile:1", "before");
    await system.tell("fragile:1", "boom");
    await system.tell("fragile:1", "after");
    await until(() => seen.length === 2);
    expect(seen).toEqual(["before", "after"]);
    expect(failures).toEqual(["fragile:1:bad message"]);
    expect(system.stats().failures).toBe(1);
    expect(system.isActive("fragile:1")).toBe(true);
  });

  test("ask returns the handler's value and rejects with the handler's error", async () => {
    const system = await singleNode((s) =>
      s.register("echo", () => ({
        async receive(message: unknown) {
          if (message === "fail") throw new Error("nope");
          return { echoed: message };
        },
      })),
    );
    expect(await system.ask("echo:1", "hi")).toEqual({ echoed: "hi" });
    await expect(system.ask("echo:1", "fail")).rejects.toThrow("nope");
    expect(await system.ask("echo:1", "still alive")).toEqual({ echoed: "still alive" });
  });

  test("a full mailbox refuses a local tell with MailboxFullError instead of growing", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const system = await singleNode(
      (s) =>
        s.register("slow", () => ({
          async receive() {
            await gate;
          },
        })),
      { mailboxCapacity: 3 },
    );
    await system.tell("slow:1", 0);
    await until(() => true);
    await new Promise((resolve) => setTimeout(resolve, 5));
    for (let i = 1; i <= 3; i++) await system.tell("slow:1", i);
    await expect(system.tell("slow:1", 4)).rejects.toBeInstanceOf(MailboxFullError);
    release();
  });

  test("an actor activates on its first message and passivates after the idle timeout, saving state", async () => {
    const events: string[] = [];
    const saved = new Map<string, number>();
    const system = await singleNode(
      (s) =>
        s.register("tally", (id) => {
          let count = 0;
          const behavior: ActorBehavior = {
            onActivate() {
              count = saved.get(id) ?? 0;
              events.push(`activate:${count}`);
            },
            receive() {
              count++;
              return count;
            },
            onPassivate(_ctx, reason) {
              saved.set(id, count);
              events.push(`passivate:${reason}`);
            },
          };
          return behavior;
        }),
      { idleTimeoutMs: 100 },
    );
    expect(system.isActive("tally:a")).toBe(false);
    expect(await system.ask("tally:a", "+")).toBe(1);
    expect(await system.ask("tally:a", "+")).toBe(2);
    expect(system.isActive("tally:a")).toBe(true);
    await until(() => !system.isActive("tally:a"), 15_000);
    expect(saved.get("a")).toBe(2);
    expect(await system.ask("tally:a", "+")).toBe(3);
    expect(events).toEqual(["activate:0", "passivate:idle", "activate:2"]);
  });

  test("stopActor stops the actor without passivation and refuses what was queued", async () => {
    const events: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const system = await singleNode((s) =>
      s.register("victim", () => ({
        async receive(message: unknown) {
          if (message === "block") await gate;
          events.push(`got:${message}`);
        },
        onPassivate() {
          events.push("passivate");
        },
        onStop(_ctx, reason) {
          events.push(`stop:${reason}`);
        },
      })),
    );
    await system.tell("victim:1", "block");
    const queued = system.ask("victim:1", "queued");
    const stopped = system.stopActor("victim:1", "erased");
    release();
    await stopped;
    await expect(queued).rejects.toBeInstanceOf(ActorStoppedError);
    expect(events).toEqual(["got:block", "stop:erased"]);
    expect(system.isActive("victim:1")).toBe(false);
  });

  test("a message for an unregistered kind is refused with UnknownActorKindError", async () => {
    const system = await singleNode(() => {});
    await expect(system.tell("nobody:1", "x")).rejects.toBeInstanceOf(UnknownActorKindError);
  });

  test("the embedded node is a one-member ring that owns every key", async () => {
    const system = await singleNode(() => {});
    expect(system.ringMembers()).toEqual(["solo"]);
    expect(system.ownerOf("user:anything")).toBe("solo");
    const view = system.clusterView();
    expect(view.self).toBe("solo");
    expect(view.nodes.map((n) => n.nodeId)).toEqual(["solo"]);
    expect(view.ring.vnodes).toBe(512);
  });
});
