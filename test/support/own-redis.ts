// The starters of private service instances live beside the load harness, which uses them too.
export { OwnRedis } from "../../src/loadtest/services/own-redis.ts";
