import { Counter, collectDefaultMetrics, Histogram, Registry } from "prom-client";

/** Prometheus metrics of one node, in a registry of its own so several nodes can share a process. */
export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<"method" | "route" | "status">;
  readonly httpDuration: Histogram<"method" | "route">;

  constructor(nodeId: string, options: { processMetrics?: boolean } = {}) {
    this.registry.setDefaultLabels({ node: nodeId });
    this.httpRequests = new Counter({
      name: "clearbox_http_requests_total",
      help: "HTTP requests answered by the public listener",
      labelNames: ["method", "route", "status"],
      registers: [this.registry],
    });
    this.httpDuration = new Histogram({
      name: "clearbox_http_request_duration_seconds",
      help: "Time to answer an HTTP request on the public listener",
      labelNames: ["method", "route"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry, prefix: "clearbox_" });
  }
}
