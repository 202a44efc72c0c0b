// The starters of private service instances live beside the load harness, which uses them too.
export { OwnPostgres } from "../../src/loadtest/services/own-postgres.ts";
