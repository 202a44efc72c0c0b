import { Elysia } from "elysia";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { GroupModel } from "./model.ts";
import type { GroupService } from "./service.ts";

/**
 * The /v1/groups and /v1/invitations routes of docs/PROTOCOL.md. Every change spends the group-change
 * budget (`GroupService.spendChange`) after its input passed the schema and before anything is read.
 */
export function groupRoutes(groups: GroupService, sessions: SessionService) {
  return new Elysia({ name: "clearbox.groups", normalize: false })
    .use(authPlugin(sessions))
    .post(
      "/v1/groups",
      async ({ principal, body, set }) => {
        await groups.spendChange(principal);
        set.status = 201;
        return { groupId: await groups.create(principal.userId, body.name, body.members) };
      },
      { auth: true, body: GroupModel.create, response: { 201: GroupModel.created } },
    )
    .get("/v1/groups/:groupId", ({ principal, params }) => groups.get(params.groupId, principal.userId), {
      auth: true,
      params: GroupModel.groupParams,
      response: GroupModel.group,
    })
    .post(
      "/v1/groups/:groupId/members",
      async ({ principal, params, body, set }) => {
        await groups.spendChange(principal);
        await groups.addMember(params.groupId, principal.userId, body.userId);
        set.status = 204;
      },
      { auth: true, params: GroupModel.groupParams, body: GroupModel.addMember },
    )
    .delete(
      "/v1/groups/:groupId/members/:userId",
      async ({ principal, params, set }) => {
        await groups.spendChange(principal);
        await groups.removeMember(params.groupId, principal.userId, params.userId);
        set.status = 204;
      },
      { auth: true, params: GroupModel.memberParams },
    )
    .get(
      "/v1/invitations",
      async ({ principal }) => ({ invitations: await groups.invitations(principal.userId) }),
      { auth: true, response: GroupModel.invitations },
    )
    .post(
      "/v1/invitations/:groupId/accept",
      async ({ principal, params, set }) => {
        await groups.spendChange(principal);
        await groups.accept(params.groupId, principal.userId);
        set.status = 204;
      },
      { auth: true, params: GroupModel.groupParams },
    )
    .post(
      "/v1/invitations/:groupId/decline",
      async ({ principal, params, set }) => {
        await groups.spendChange(principal);
        await groups.decline(params.groupId, principal.userId);
        set.status = 204;
      },
      { auth: true, params: GroupModel.groupParams },
    );
}
