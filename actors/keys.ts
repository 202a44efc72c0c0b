/**
 * Actor keys are `<kind>:<id>`; the kind selects the factory registered with
 * `ActorSystem.register`, and the whole key is what the ring places.
 */

/** Kind of the actor of one user: register its factory under this name. */
export const USER_KIND = "user";

/** Kind of the actor of one group: register its factory under this name. */
export const GROUP_KIND = "group";

/** Key of the actor of user `userId` (an account id), e.g. `user:3f2a…`. */
export function userKey(userId: string): string {
  return `${USER_KIND}:${userId}`;
}

/** Key of the actor of group `groupId`, e.g. `group:9c1e…`. */
export function groupKey(groupId: string): string {
  return `${GROUP_KIND}:${groupId}`;
}
