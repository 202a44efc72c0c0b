// The starters of private service instances live beside the load harness, which uses them too.
export { freePort } from "../../src/loadtest/services/free-port.ts";
export { OwnRabbitMq } from "../../src/loadtest/services/own-rabbitmq.ts";
