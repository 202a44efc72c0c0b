// The starters of private service instances live beside the load harness, which uses them too.
export { freePort, type PortSource, waitFor } from "../../src/loadtest/services/free-port.ts";
