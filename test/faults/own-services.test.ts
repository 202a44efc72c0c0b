import { afterAll, describe, expect, test } from "bun:test";
import { holdPort, takenFirst } from "../support/free-port.ts";
import { OwnPostgres } from "../support/own-postgres.ts";
import { OwnRabbitMq } from "../support/own-rabbitmq.ts";
import { OwnRedis } from "../support/own-redis.ts";

/**
 * The private servers fault tests boot choose a free port a moment before the server binds it;
 * another process may take it in between (2 of 75 runs of the RabbitMQ crash test failed so). Here
 * the port is taken for sure: the source hands out a port something already listens on, then free
 * ones. The helper must boot its own server on another port, and never take the other server that
 * holds the port for its own.
 */

describe("private servers booted on a port another process took meanwhile", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  });

  test("RabbitMQ: its node boots on a fresh port", async () => {
    const holder = await holdPort();
    cleanups.push(() => holder.release());
    const broker = await OwnRabbitMq.start({ ports: takenFirst(holder.port) });
    cleanups.push(() => broker.destroy());
    expect(broker.port).not.toBe(holder.port);
    expect(broker.running).toBe(true);
  }, 180_000);

  test("Redis: its server boots on a fresh port, not mistaken for the server holding the port", async () => {
    const other = await OwnRedis.start();
    cleanups.push(() => other.stop());
    const redis = await OwnRedis.start({ ports: takenFirst(other.port) });
    cleanups.push(() => redis.stop());
    expect(redis.port).not.toBe(other.port);
    expect(redis.running).toBe(true);
  }, 120_000);

  test("PostgreSQL: its postmaster boots on a fresh port", async () => {
    const holder = await holdPort();
    cleanups.push(() => holder.release());
    const pg = await OwnPostgres.start({}, { ports: takenFirst(holder.port) });
    cleanups.push(() => pg.stop());
    expect(pg.port).not.toBe(holder.port);
    expect(pg.running).toBe(true);
  }, 180_000);
});
