import type { ClientFrame } from "../protocol/index.ts";
import { ClearBoxApiError } from "./http.ts";

/** What re-authentication needs of the HTTP client (`ClearBoxHttp` provides it). */
export interface AccessTokens {
  /** A valid access token, refreshed first when its renewal is due. */
  accessToken(): Promise<string>;
  /** When the access token is due for renewal (Unix ms, local clock). */
  readonly renewAt: number;
}

/** Wait after a failed refresh (network) before the next attempt, ms. */
const RETRY_MS = 1000;

/**
 * How long an `auth` frame may go unanswered before it is sent again, ms: the server answers
 * `auth.ok` at once, or `error rate_limited` (no id) when the device's frame budget is spent, for
 * example by large sends just before the renewal. Unconfirmed, the socket would be closed 4440 at
 * the old token's expiry.
 */
export const AUTH_CONFIRM_MS = 2000;

/**
 * Keeps one socket authenticated past its access token's lifetime (docs/PROTOCOL.md,
 * re-authentication): when the token is due for renewal it is refreshed over HTTP and sent in an
 * `auth` frame, which moves the socket's expiry to the new token's; a socket whose token expired is
 * closed by the server with 4440. An `auth` frame not confirmed (`acknowledged`, on `auth.ok`) within
 * `confirmMs` is sent again (the server refused it `rate_limited`, or it was lost), until confirmed
 * or the socket closes. A refresh the server refuses (401: the device was revoked) stops the
 * renewal: the server closes the socket (4401, or 4440 at expiry). Timers do not keep the process
 * alive.
 */
export class SocketReauthentication {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;

  /** An `auth` frame was sent and its `auth.ok` has not come yet. */
  private awaiting = false;

  constructor(
    private readonly tokens: AccessTokens,
    private readonly send: (frame: ClientFrame) => void,
    /** How long an `auth` frame may go unanswered before it is sent again (ms). */
    private readonly confirmMs: number = AUTH_CONFIRM_MS,
  ) {}

  /** The server answered `auth.ok`: the renewal took; the next one is scheduled at the token's `renewAt`. */
  acknowledged(): void {
    if (!this.awaiting) return;
    this.awaiting = false;
    this.schedule(Math.max(0, this.tokens.renewAt - Date.now()));
  }

  /** Schedules the first renewal (at the token's `renewAt`). */
  start(): this {
    this.schedule(Math.max(0, this.tokens.renewAt - Date.now()));
    return this;
  }

  /** Stops renewing (the socket closed). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.renew(), delayMs);
    this.timer.unref?.();
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    try {
      const token = await this.tokens.accessToken();
      if (this.stopped) return;
      this.send({ type: "auth", token });
      // Sent again unless `auth.ok` comes first (`acknowledged` then schedules the next renewal).
      this.awaiting = true;
      this.schedule(this.confirmMs);
    } catch (error) {
      if (error instanceof ClearBoxApiError && error.status === 401) {
        this.stop();
        return;
      }
      this.schedule(RETRY_MS);
    }
  }
}
