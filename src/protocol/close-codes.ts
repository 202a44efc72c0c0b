/**
 * WebSocket close codes of `GET /v1/ws` (docs/PROTOCOL.md). 1001, 1009 and 1011 are RFC 6455's; the
 * 4xxx codes are ClearBox's, in the range RFC 6455 §7.4.2 leaves to applications, echoing the
 * HTTP status of the same meaning.
 */
export const CloseCode = {
  /** The node is shutting down; reconnect (possibly to another node). */
  goingAway: 1001,
  /** A frame over 1 MiB: Bun closes the socket. */
  messageTooBig: 1009,
  /** The server could not bring the device online (a store failed): reconnect after a delay. */
  internalError: 1011,
  /**
   * The device's tokens were revoked: its refresh token was replayed (theft signal), the password
   * was changed on another device, or the identity provider or an admin signed the user out. Sign in again.
   */
  revoked: 4401,
  /** The device was removed from its account. */
  deviceRemoved: 4404,
  /** Another socket for the same device replaced this one. */
  replaced: 4409,
  /** The account was erased. */
  erased: 4410,
  /**
   * The socket's access token expired and was not renewed in-band (an `auth` frame): refresh the
   * tokens (`POST /v1/sessions/refresh`) and reconnect. Echoes HTTP 440, "login time-out".
   */
  tokenExpired: 4440,
} as const;

export type CloseCodeValue = (typeof CloseCode)[keyof typeof CloseCode];
