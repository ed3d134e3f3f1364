/**
 * qrlink protocol v1, with the v1.1 additions (resume): TypeScript definitions of every
 * WebSocket message. v1.1 only adds optional fields, an error code, close codes and watch
 * events, so a v1 client keeps working.
 *
 * Served by the gateway at `/qrlink.d.ts`, beside the AsyncAPI document (`/asyncapi.yaml`) and
 * the JSON Schemas (`/schema/*.json`) it mirrors. Every message is one JSON object in one
 * WebSocket text message; every union below is discriminated on `type`.
 *
 * Forward compatibility: ignore fields you do not know, and frames of a `type` you do not know.
 *
 * @example
 * ```ts
 * import type { ServerFrame } from "./qrlink";
 * const ws = new WebSocket(`wss://${location.host}/ws/link/whatsapp`);
 * ws.onmessage = (e) => {
 *   const frame = JSON.parse(e.data) as ServerFrame;
 *   switch (frame.type) {
 *     case "qr": show(frame.svg!); break;
 *     case "account": done(frame.account.id); break;
 *     case "error": fail(frame.code, frame.retryable); break;
 *   }
 * };
 * ```
 */

/** The protocol version these definitions describe (`protocol` in /config.json; v1.1 is additive). */
export type ProtocolVersion = 1;

/**
 * v1.1: the resume token, an opaque URL-safe string (at least 128 random bits), the same in
 * every `qr` and `checkpoint` frame of a session. Present only when the gateway keeps
 * detached sessions (`resume_grace_secs` > 0 in /config.json). After a socket closes without
 * a terminal frame and without `cancel`, `GET /ws/link/{provider}?resume=TOKEN` re-attaches to
 * the session within the grace (no connect token needed). Keep it like a password.
 */
export type ResumeToken = string;

/** A provider id, e.g. `whatsapp`, `google_messages`, `telegram` (configurable per gateway). */
export type Provider = "whatsapp" | "google_messages" | "telegram" | (string & {});

/** `ses_` and random base62 characters. Empty in an `error` sent before a session existed. */
export type SessionId = string;

/** A UTC timestamp in RFC 3339, e.g. `2026-11-28T10:00:00.123Z`. */
export type Timestamp = string;

// ------------------------------------------------------------------ /ws/link/{provider}

/** Fields every server frame carries. */
export interface FrameBase {
  /** The gateway's session id, the same in every frame of one link attempt. */
  session: SessionId;
  /** 1, 2, 3 … per session, so a gap shows a missed frame. */
  seq: number;
}

/** A QR code to show; one per QR the upstream issues, the next one replaces it. */
export interface QrFrame extends FrameBase {
  type: "qr";
  /** Counts the QR codes of this attempt from 1. */
  rotation: number;
  /** Unipile's intent id (`acc_…`). */
  intent_id: string;
  /** The gateway's estimate of when this QR stops working. */
  expires_at: Timestamp;
  /**
   * The QR as a standalone SVG document (`?qr=svg`, the default). Absent on `/ws/watch`
   * unless the watcher asked `?qr=svg` and is an admin.
   */
  svg?: string;
  /** The QR in Unicode half blocks, for terminals (`?qr=text`). */
  text?: string;
  /** The string the QR encodes (`?qr=raw`). */
  raw?: string;
  /** v1.1: the session's resume token (never on `/ws/watch`). */
  resume?: ResumeToken;
  /**
   * v1.1: only on the first frame of a resumed socket, the session's last frame sent again
   * unchanged (same `seq`, `rotation`, `expires_at`). Past its `expires_at` the code no longer
   * works: show it as expired, the next `qr` follows.
   */
  replay?: true;
}

/** Unipile's checkpoint object, passed through; unknown fields kept. */
export interface Checkpoint {
  /** What the upstream asks for, e.g. `2FA`. */
  type: string;
  /** Where the person finds the answer, e.g. `APP`. */
  platform?: string;
  [field: string]: unknown;
}

/** The upstream needs an answer (e.g. Telegram's 2FA password); reply with {@link CodeMessage}. */
export interface CheckpointFrame extends FrameBase {
  type: "checkpoint";
  checkpoint: Checkpoint;
  /**
   * Present when the previous answer was wrong: the same checkpoint is asked again (up to 3
   * answers in all; after the third wrong one the session ends with an `error` frame).
   */
  error?: { code: "provider/invalid_checkpoint_code"; message: string };
  /** v1.1: the session's resume token (never on `/ws/watch`). */
  resume?: ResumeToken;
  /** v1.1: only on the first frame of a resumed socket: the same checkpoint asked again. */
  replay?: true;
}

/** Unipile's Account object, passed through; unknown fields kept. */
export interface Account {
  /** The Unipile account id (`acc_…`). */
  id: string;
  name?: string;
  provider?: string;
  status?: string;
  [field: string]: unknown;
}

/** Terminal: the account is linked. The gateway then closes with 1000. */
export interface AccountFrame extends FrameBase {
  type: "account";
  account: Account;
  /** The connect token's `sub`, when the attempt had a connect token. */
  state?: string;
  /**
   * v1.1, with connect tokens on: the result token, a JWT (HS256, the connect tokens' secret)
   * with `iss` "qrlink", `sub`, `account_id`, `provider`, `session`, `iat`, `exp` (iat + 5 min)
   * and `jti`. Hand it to your backend, which verifies it and uses `jti` once.
   */
  result?: string;
}

/** Terminal: nobody scanned before the provider gave up. The gateway then closes with 1000. */
export interface TimeoutFrame extends FrameBase {
  type: "timeout";
  /** How many QR codes were shown. */
  rotations: number;
}

/** The gateway's own error codes. */
export type GatewayErrorCode =
  /** The path names a provider this gateway does not link (close 1008). */
  | "request/unknown_provider"
  /** Missing, invalid or expired connect token (close 1008). */
  | "request/unauthorized"
  /** Binary data (1003), malformed JSON (1007) or an oversized message (1009). */
  | "request/invalid_message"
  /** Too many sessions (close 1013). */
  | "gateway/overloaded"
  /** The gateway is stopping (close 1001). */
  | "gateway/shutting_down"
  /** Unipile could not be reached within the retry budget. */
  | "gateway/upstream_unavailable"
  /** Unipile answered something the gateway cannot read. */
  | "gateway/upstream_invalid"
  /** Unipile asked for a step a QR flow cannot take (e.g. an OAuth URL). */
  | "gateway/unsupported_step"
  /** An operator cancelled the session. */
  | "session/cancelled"
  /**
   * v1.1: the `?resume=` token is unknown, its session ended, or its grace passed (close
   * 1008). Retryable: start a new attempt.
   */
  | "session/expired";

/** Unipile error types the link page names; any other upstream `type` passes through too. */
export type UpstreamErrorCode =
  | "api/proxy_auth_error"
  | "api/proxy_error"
  | "api/proxy_timeout"
  | "api/already_exists"
  | "api/account_restricted"
  | "provider/invalid_checkpoint_code"
  | (string & {});

/** An error code: the upstream's `type` unchanged, or the gateway's own. */
export type ErrorCode = GatewayErrorCode | UpstreamErrorCode;

/**
 * Terminal: the attempt failed. The gateway then closes with 1000, or with the protocol-error
 * code the error explains (see {@link CloseCode}).
 */
export interface ErrorFrame extends FrameBase {
  type: "error";
  code: ErrorCode;
  /** The gateway's own sentence for a person. */
  message: string;
  /** Whether starting the same attempt again may work. */
  retryable: boolean;
  /** The upstream's `detail`, passed through (not meant for end users). */
  detail?: string;
  /** The upstream's request id, for support requests. */
  req_id?: string;
}

/** What the gateway sends on `/ws/link/{provider}`. */
export type ServerFrame = QrFrame | CheckpointFrame | AccountFrame | TimeoutFrame | ErrorFrame;

/** The frames that end a session: exactly one per session. */
export type TerminalFrame = AccountFrame | TimeoutFrame | ErrorFrame;

/** Stop the attempt: the gateway closes with 1000 and sends no terminal frame. */
export interface CancelMessage {
  type: "cancel";
}

/** Answer the latest `checkpoint` frame. */
export interface CodeMessage {
  type: "code";
  /** The code or password the person typed. */
  code: string;
}

/**
 * What a client may send on `/ws/link/{provider}`; a plain QR flow sends nothing. The gateway
 * ignores other `type`s; binary data, malformed JSON and messages over 4096 bytes are
 * protocol errors.
 */
export type ClientMessage = CancelMessage | CodeMessage;

/**
 * WebSocket close codes the gateway uses.
 * - 1000: after a terminal frame, or after the client's `cancel`
 * - 1001: the gateway is shutting down (`gateway/shutting_down`)
 * - 1003: the client sent binary data (`request/invalid_message`)
 * - 1007: the client sent text that is not a JSON message (`request/invalid_message`)
 * - 1008: policy: bad connect token, unknown provider, a resume token that cannot be resumed
 *   (after `session/expired`) or one used on another provider's path (no frame)
 * - 1009: the client sent a message over 4096 bytes (`request/invalid_message`)
 * - 1012: v1.1, service restart (a cluster node stopping): no frame; the session is
 *   detached, so resume it
 * - 1013: over capacity, try again later (`gateway/overloaded`)
 * - 4000: v1.1, `resumed elsewhere`: another socket resumed this session and took it over;
 *   no frame, do not reconnect
 *
 * Any close without a terminal frame other than 1000 after `cancel`, 1008, 4000 and the
 * protocol errors (1003, 1007, 1009), e.g. 1006 or 1012, leaves a resumable session detached.
 */
export type CloseCode = 1000 | 1001 | 1003 | 1007 | 1008 | 1009 | 1012 | 1013 | 4000;

/** Query parameters of `/ws/link/{provider}`. */
export interface LinkQuery {
  /** Connect token, required when the gateway has `QRLINK_TOKEN_SECRET` (not on resume). */
  token?: string;
  /** Comma list of `svg` (default), `text`, `raw`. */
  qr?: string;
  /** Relink an existing Unipile account (only from the connect token when tokens are configured). */
  account_id?: string;
  /** v1.1: re-attach to the session of this resume token instead of starting a new one. */
  resume?: ResumeToken;
}

// ------------------------------------------------------------------ /ws/watch

/** What an open session is doing. */
export type Phase =
  /** Start Auth Intent in flight. */
  | "starting"
  /** A QR is shown, waiting for the scan. */
  | "qr"
  /** Waiting for the client's checkpoint code. */
  | "checkpoint"
  /** v1.1: its socket went away without ending it; it waits out the resume grace. */
  | "detached"
  /** A terminal frame was sent; the socket is closing. */
  | "closing";

/** An open session, as in `snapshot` and `GET /api/sessions` (`{"sessions": SessionInfo[]}`). */
export interface SessionInfo {
  id: SessionId;
  provider: Provider;
  phase: Phase;
  /** QR codes shown so far (0 before the first). */
  rotation: number;
  started_at: Timestamp;
  /** Milliseconds since the session started, when the snapshot was taken. */
  age_ms: number;
  /** The client's IP address. */
  client: string;
  /** Cluster mode: the node the session is on; absent with one node in memory. */
  node?: string;
}

/** The first event on every watch connection: the sessions open now, oldest first. */
export interface SnapshotEvent {
  type: "snapshot";
  sessions: SessionInfo[];
}

/** A link attempt started. */
export interface OpenedEvent {
  type: "opened";
  session: SessionId;
  provider: Provider;
  /** The client's IP address. */
  client: string;
  at: Timestamp;
  /** Cluster mode: the node the session opened on; absent with one node in memory. */
  node?: string;
}

/**
 * v1.1: the session's socket closed without a terminal frame and without `cancel`; it waits
 * out the resume grace in phase `detached` (then `resumed`, or `closed` `disconnected`).
 */
export interface DetachedEvent {
  type: "detached";
  session: SessionId;
  at: Timestamp;
}

/**
 * v1.1: a socket re-attached to the session with its resume token; the session is back in the
 * phase it had before (`qr` or `checkpoint`), which its next frame confirms.
 */
export interface ResumedEvent {
  type: "resumed";
  session: SessionId;
  at: Timestamp;
}

/** A session frame as forwarded to watchers: never with the resume token. */
export type WatchedFrame =
  | Omit<QrFrame, "resume">
  | Omit<CheckpointFrame, "resume">
  | AccountFrame
  | TimeoutFrame
  | ErrorFrame;

/**
 * How a session ended: linked, nobody scanned, an error frame, cancelled (client `cancel` or
 * operator DELETE), the client went away (with resume: a detached session whose grace
 * passed), or the gateway stopped.
 */
export type Outcome = "account" | "timeout" | "error" | "cancelled" | "disconnected" | "shutdown";

/** A link attempt ended, after its last frame. */
export type ClosedEvent =
  | {
      type: "closed";
      session: SessionId;
      outcome: "error";
      /** Milliseconds from open to close. */
      duration_ms: number;
      /** The `code` of the session's error frame. */
      code: ErrorCode;
    }
  | {
      type: "closed";
      session: SessionId;
      outcome: Exclude<Outcome, "error">;
      /** Milliseconds from open to close. */
      duration_ms: number;
    };

/**
 * This watcher fell behind and `skipped` events were dropped for it (a watcher never slows a
 * link attempt down). Re-read `GET /api/sessions`, or reconnect for a fresh snapshot.
 */
export interface LaggedEvent {
  type: "lagged";
  skipped: number;
}

/**
 * What the gateway sends on `/ws/watch`: a snapshot first, then `opened`, each session's
 * frames (QR content absent unless asked for and allowed; never `resume`), `detached` and
 * `resumed` (v1.1), `closed`, and `lagged`.
 */
export type WatchEvent =
  | SnapshotEvent
  | OpenedEvent
  | DetachedEvent
  | ResumedEvent
  | ClosedEvent
  | LaggedEvent
  | WatchedFrame;

/** One node's numbers in `GET /api/stats` (and their sums in `total`, where `node` is ""). */
export interface NodeStats {
  node: string;
  /** When the node started (`total`: the earliest node). */
  started_at: Timestamp;
  /** When these numbers were read, unix ms. */
  at_ms: number;
  /** Sessions open now, attached or detached. */
  open: number;
  /** Sessions ended since the node started, by outcome (every outcome present). */
  ended: Record<Outcome, number>;
  /** Open sessions sampled on every 10 s of the clock over the last 15 minutes:
   *  [unix ms, count], oldest first (`total`: summed per instant). */
  open_history: [number, number][];
  /** Linked sessions by time to scan (start → linked): `counts[i]` within `bounds_secs[i]`
   *  (and above the bound before); the last count is the rest. */
  time_to_scan: { bounds_secs: number[]; counts: number[]; sum_ms: number };
}

/** `GET /api/stats` (admin): the dashboard's totals and charts. */
export interface StatsResponse {
  /** The node that answered. */
  node: string;
  /** Several nodes sharing Redis. */
  cluster: boolean;
  /** Cluster mode: false when Redis did not answer (only this node is in `nodes`). */
  complete: boolean;
  /** Every live node's numbers, by name. */
  nodes: NodeStats[];
  total: NodeStats;
}

// ------------------------------------------------------------------------------------------
// The drop-in script: /qrlink.js (classic script, `window.QrLink`) and /qrlink.mjs (ES module,
// `export default QrLink` and `export { QrLink }`), one source. See the header of web/qrlink.js.

/** Options of {@link QrLinkStatic.create}. */
export interface QrLinkOptions {
  /**
   * The gateway's origin (a path prefix is kept), e.g. `"https://link.example.com"`. Default:
   * where the script was loaded from (`<script src>` or the module's URL). Required when
   * /qrlink.js is imported for its side effect rather than loaded by a tag.
   */
  gateway?: string;
  /**
   * A connect token minted by your backend (`qrlink token`, README). Needed when the gateway
   * has QRLINK_TOKEN_SECRET. It reaches the framed page by postMessage, never in a URL.
   */
  token?: string;
  /** Link this app at once; without it the page shows its picker. */
  provider?: Provider;
  /**
   * Linked. Then the modal closes and `onExit(null)` follows. Send `meta.result` to your
   * backend, which verifies it (or rely on the webhook); do not trust `account` alone.
   */
  onSuccess?(account: Account, meta: QrLinkSuccessMeta): void;
  /**
   * The modal closed: exactly once per `open()`. `error` is null after success and when the
   * person closed it (Esc, the Close button, `exit()`, `destroy()`) with nothing gone wrong;
   * otherwise the error the page was showing, or one of the script's own `embed/*` errors.
   */
  onExit?(error: QrLinkError | null, meta: QrLinkExitMeta): void;
  /** What happens meanwhile, for analytics or your own UI. */
  onEvent?<N extends QrLinkEventName>(name: N, data: QrLinkEventData[N]): void;
}

export interface QrLinkSuccessMeta {
  /** The result token (connect tokens on): a JWT for your backend to verify; else null. */
  result: string | null;
  /** The connect token's `sub`, or null. */
  state: string | null;
  session: SessionId | null;
  provider: Provider | null;
}

export interface QrLinkExitMeta {
  /** The last attempt's session, or null when none started. */
  session: SessionId | null;
}

/**
 * Why the modal closed with an error. A gateway or upstream error code (`api/proxy_error`…;
 * a timeout is `provider/timeout`), or the script's own:
 * - `embed/forbidden`: the gateway does not let this origin frame its page (add the origin to
 *   QRLINK_ALLOWED_ORIGINS, or to QRLINK_FRAME_ANCESTORS when that is set); also logged.
 * - `embed/unreachable`: `{gateway}/embed.json` could not be read (wrong `gateway`, or down).
 * - `embed/unavailable`: the framed page did not say `ready` in time.
 */
export interface QrLinkError {
  code: ErrorCode | "provider/timeout" | "embed/forbidden" | "embed/unreachable" | "embed/unavailable";
  message: string;
  retryable: boolean;
  /** The upstream's detail, when the gateway had one. */
  detail?: string | null;
  /** The upstream's request id, for support. */
  req_id?: string | null;
  /** `provider/timeout`: how many codes were shown. */
  rotations?: number | null;
}

export type QrLinkEventName = keyof QrLinkEventData;

/** Each event's data; every one also carries the session (null until there is one). */
export interface QrLinkEventData {
  /** `open()` was called: the modal is on screen. */
  open: { session: SessionId | null; provider: Provider | null };
  /** A new code is on screen; nothing of the code itself. */
  qr: { session: SessionId | null; rotation: number; expires_at: Timestamp | null };
  /** The app asks for more after the scan: `kind` is the checkpoint type ("2FA", "OTP"…). */
  checkpoint: { session: SessionId | null; kind: string | null };
  /** The page re-attached after its connection dropped. */
  resumed: { session: SessionId | null; phase: "qr" | "checkpoint" };
  /** The attempt failed; the modal stays open on the page's explanation (Retry may follow). */
  error: { session: SessionId | null; error: QrLinkError };
  /** Linked (before `onSuccess`). */
  success: { session: SessionId | null; account: Account };
  /** The modal closed (before `onExit`). */
  exit: { session: SessionId | null; error: QrLinkError | null };
}

/** What {@link QrLinkStatic.create} returns. */
export interface QrLinkHandle {
  /** Shows the modal. Does nothing while it is open; after `destroy()`, warns and does nothing. */
  open(): void;
  /** Closes the modal as its Close button does: the attempt is cancelled, then `onExit`. */
  exit(): void;
  /**
   * Removes everything at once: no element, listener, timer or socket is left, and a running
   * attempt is cancelled (it ends in /api/sessions, it is not left detached). `onExit` fires
   * if the modal was open. Idempotent.
   */
  destroy(): void;
}

export interface QrLinkStatic {
  /** Checks the options (a TypeError names a bad one) and returns a closed handle. */
  create(options?: QrLinkOptions): QrLinkHandle;
  readonly version: 1;
}

/** `window.QrLink` (classic script), or the module's default export. */
export declare const QrLink: QrLinkStatic;
export default QrLink;

/** What the framed page posts to the host (only to the origin named in its URL). */
export type PageToHostMessage = { source: "qrlink"; version: 1; provider: Provider | null; session: SessionId | null } & (
  | { type: "ready"; demo: boolean; token_required: boolean }
  | { type: "qr"; rotation: number; expires_at: Timestamp | null }
  | { type: "checkpoint"; kind: string | null }
  | { type: "resumed"; phase: "qr" | "checkpoint" }
  | { type: "account"; account: Account; state: string | null; result: string | null }
  | { type: "timeout"; rotations: number | null }
  | { type: "error"; code: ErrorCode | null; message: string | null; retryable: boolean; detail: string | null; req_id: string | null }
  /** After `exit`: the attempt was cancelled. */
  | { type: "exited" }
  /** Esc was pressed in the page. */
  | { type: "close" }
);

/** What the host (qrlink.js) posts to the framed page, to the gateway's origin only. */
export type HostToPageMessage = { source: "qrlink-host"; version: 1 } & (
  /** The answer to `ready`: begin, with this connect token. */
  | { type: "start"; token: string | null; provider: Provider | null }
  /** Cancel the attempt, then say `exited`. */
  | { type: "exit" }
  /** Focus the first or last control (the host's focus trap wrapping into the frame). */
  | { type: "focus"; at: "first" | "last" }
);
