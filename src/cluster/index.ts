import { Elysia, t } from "elysia";
import { type ClusterView, UnknownNodeError } from "../../actors/index.ts";
import { DomainError } from "../errors/index.ts";

/** What the cluster admin routes need from the actor system (an `ActorSystem` satisfies it). */
export interface ClusterAdmin {
  clusterView(): ClusterView;
  drain(nodeId: string): Promise<void>;
}

/**
 * Admin routes for the cluster: `GET /admin/v1/cluster` and `POST /admin/v1/nodes/:nodeId/drain`.
 * The drain answers 202 at once; `?wait=true`, for the answering node itself only, answers 200
 * `{status: "drained"}` once its actors are handed off, which is what a pre-stop hook waits for.
 * Mount inside the admin listener, which authenticates; this plugin does no auth of its own.
 */
export function clusterAdminRoutes(system: ClusterAdmin) {
  return new Elysia({ name: "clearbox.cluster-admin" })
    .get("/admin/v1/cluster", () => system.clusterView())
    .post(
      "/admin/v1/nodes/:nodeId/drain",
      async ({ params, query, set }) => {
        if (query.wait) {
          // Another node's drain is a message to it: only the node itself knows when it is done.
          if (params.nodeId !== system.clusterView().self) {
            throw new DomainError("invalid", "wait=true is for the answering node's own drain only");
          }
          await system.drain(params.nodeId);
          return { nodeId: params.nodeId, status: "drained" };
        }
        try {
          // Starts the drain; the handoff itself continues after the 202.
          const draining = system.drain(params.nodeId);
          await Promise.race([draining, new Promise((resolve) => setTimeout(resolve, 50))]);
          draining.catch(() => undefined);
        } catch (error) {
          if (error instanceof UnknownNodeError) {
            throw new DomainError("not_found", `node ${params.nodeId} is not a cluster member`);
          }
          throw error;
        }
        set.status = 202;
        return { nodeId: params.nodeId, status: "draining" };
      },
      {
        params: t.Object({ nodeId: t.String({ minLength: 1, maxLength: 200 }) }),
        query: t.Object({ wait: t.Optional(t.Boolean()) }),
      },
    );
}
