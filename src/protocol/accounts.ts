/**
 * The password rule of docs/PROTOCOL.md (`POST /v1/accounts`, `POST /v1/me/password`): 8 to 256
 * characters (UTF-16 code units, as the server's schema counts them). The server's schema and the
 * clients read it from here, so a client can refuse a new password before it asks for it twice or
 * sends anything.
 */
export const PASSWORD_MIN_LENGTH = 8;
export const PASSWORD_MAX_LENGTH = 256;
/** The rule in words, as refusals say it after the field's name (`password: must be …`). */
export const PASSWORD_RULE = `must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters`;

/**
 * Why `password` cannot be a new account's password (`"must be 8 to 256 characters (this one has
 * 5)"`), or undefined when the rule holds. Says nothing of the password itself.
 */
export function passwordProblem(password: string): string | undefined {
  if (password.length >= PASSWORD_MIN_LENGTH && password.length <= PASSWORD_MAX_LENGTH) return undefined;
  return `${PASSWORD_RULE} (this one has ${password.length})`;
}
