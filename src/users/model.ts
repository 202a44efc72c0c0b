import { t } from "elysia";
import { AccountModel } from "../accounts/model.ts";
import { Uuid } from "../protocol/ids.ts";

export namespace UserModel {
  /** `GET /v1/users?username=`: one exact username, with the rules usernames are made with. */
  export const lookupQuery = t.Object({ username: AccountModel.username }, { additionalProperties: false });
  export const userParams = t.Object({ userId: Uuid });
  /** A user found by username or by id: both, so a client can show names instead of ids. */
  export const user = t.Object({ userId: t.String(), username: t.String() });
}
