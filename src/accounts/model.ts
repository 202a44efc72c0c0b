import { type Static, t } from "elysia";

export namespace AccountModel {
  export const username = t.String({ minLength: 3, maxLength: 32, pattern: "^[a-z0-9_.-]+$" });
  export const password = t.String({ minLength: 8, maxLength: 256 });

  export const register = t.Object({ username, password }, { additionalProperties: false });
  export type Register = Static<typeof register>;

  export const registered = t.Object({ userId: t.String() });
}
