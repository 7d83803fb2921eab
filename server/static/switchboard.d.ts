/**
 * TypeScript declarations for `switchboard.js` (classic script: the global `Switchboard`) and
 * `switchboard.mjs` (ES module: `import Switchboard from ".../switchboard.mjs"`).
 * Served by the signaling server at `/switchboard.d.ts` (and `/switchboard.d.mts` for the
 * module entry); copy them next to your code.
 */

/** A participant as the server describes it. */
export interface Participant {
  /** Server-assigned id of one connection. */
  participant_id: string;
  /** The token's `sub`. */
  user_id: string;
  /** The token's `name`. */
  username?: string;
  /** RFC 3339 time of joining. */
  joined_at?: string;
  /** The token's `metadata` claim, when it has one. */
  metadata?: Record<string, unknown>;
}

/** Snapshot of one peer (another participant) and our connection to it. */
export interface PeerInfo {
  participantId: string;
  participant: Participant;
  /** `RTCPeerConnection.connectionState`, or `"new"` / `"closed"`. */
  connectionState: RTCPeerConnectionState | string;
  /** `RTCDataChannel.readyState`, or `"none"`. */
  channelState: RTCDataChannelState | "none" | string;
  /** Remote audio/video, when any arrived. */
  remoteStream: MediaStream | null;
}

/** Options for the {@link Switchboard} constructor. */
export interface SwitchboardOptions {
  /** Room id (1–64 of `[A-Za-z0-9_-]`). */
  room: string;
  /** JWT issued by your backend. */
  token: string;
  /**
   * HTTP(S) base URL of the signaling server. Default: the directory of the page, right only
   * when the signaling server serves that page.
   */
  baseUrl?: string | URL;
  /** Camera/microphone constraints to open on connect; null (default) = data only. */
  media?: MediaStreamConstraints | null;
  /** Reconnect after transient closes and on the server's `reconnect` hint. Default true. */
  autoReconnect?: boolean;
  /** Upper bound of the reconnect backoff in ms. Default 15000. */
  maxBackoffMs?: number;
  /** Debug logger, e.g. `console.debug`. */
  log?: (message: string, ...rest: unknown[]) => void;
  /** Returns a new JWT for the same user; called `refreshLeadMs` before the token's `exp`. */
  refreshToken?: () => Promise<string>;
  /** How long before `exp` to refresh, in ms (at most half the remaining lifetime). Default 30000. */
  refreshLeadMs?: number;
}

/** `state` values, in the order a session normally goes through them. */
export type SwitchboardState = "idle" | "connecting" | "joined" | "reconnecting" | "closed";

/** A raw server message (envelope), as the `signal` event delivers it. */
export interface ServerMessage {
  type: string;
  payload: any;
  /** The sender's participant id; null for server-originated messages. */
  sender_id: string | null;
  room_id: string;
  /** RFC 3339 UTC with milliseconds. */
  timestamp: string;
  /** The target participant id; null for broadcasts. */
  to: string | null;
  /** Later protocol versions add fields. */
  [field: string]: unknown;
}

/** `detail` of each event the client emits. */
export interface SwitchboardEventDetails {
  state: { state: SwitchboardState };
  /** `resumed`: this `room-state` answered a resume; peers and calls were kept. */
  joined: { self: Participant | null; participants: Participant[]; resumed: boolean };
  participants: { participants: Participant[]; self: Participant | null };
  peer: { peer: PeerInfo };
  "channel-open": { participantId: string; participant: Participant | null };
  /** `reason` is the server's: `closed`, `timeout`, `instance_lost`, `draining`, `removed`, ... */
  "participant-left": { participantId: string; participant: Participant | null; reason: string };
  /** The application replaced a participant's `metadata` (server API). */
  "participant-updated": { participantId: string; participant: Participant };
  /** A message the application backend sent into the room (server API). */
  "server-message": { payload: any };
  message: { participantId: string; participant: Participant | null; data: string | ArrayBuffer | Blob };
  track: { participantId: string; stream: MediaStream };
  signal: { message: ServerMessage };
  /** Server `error` codes, plus local ones: `config_failed`, `peer_failed`, `refresh_failed`. */
  /** `seq`: the client seq of the message the server answered, when it had one. */
  error: { code: string; message?: string; seq?: number };
  reconnect: { afterMs: number };
  /** 4001 `removed` and 4002 `room_closed` (server API) are final, like refusals. */
  closed: { code: number; reason: string; willReconnect: boolean };
  /** `expiresAt` in Unix seconds. */
  tokenrefreshed: { expiresAt: number | null };
}

/** Every event as the `CustomEvent` it arrives as. */
export type SwitchboardEventMap = {
  [K in keyof SwitchboardEventDetails]: CustomEvent<SwitchboardEventDetails[K]>;
};

/** Client for one room. Events: see {@link SwitchboardEventDetails}. */
declare class Switchboard extends EventTarget {
  constructor(options: SwitchboardOptions);

  readonly room: string;
  state: SwitchboardState;
  /** Ourselves, from the last `room-state`. */
  self: Participant | null;
  /** Everyone in the room, self included, by participant id. */
  participants: Map<string, Participant>;
  localStream: MediaStream | null;
  rtcConfig: RTCConfiguration;

  /** Fetches the ICE configuration, opens media if asked, joins; resolves on the first `room-state`. */
  connect(): Promise<void>;
  /** `GET /webrtc/config` with the token, as an `RTCConfiguration`. */
  fetchConfig(): Promise<RTCConfiguration>;
  enableMedia(constraints?: MediaStreamConstraints): Promise<MediaStream>;
  disableMedia(): void;
  /** Sends over every open data channel; returns how many peers it reached. */
  send(data: string | ArrayBuffer | ArrayBufferView | Blob): number;
  /** false when no open channel to that peer exists. */
  sendTo(participantId: string, data: string | ArrayBuffer | ArrayBufferView | Blob): boolean;
  /**
   * A raw signaling message through the server. With resume on, relayed types are numbered,
   * kept until acked and re-sent after a resume (always true); otherwise false when the
   * WebSocket is not open.
   */
  signal(type: string, payload?: unknown, to?: string): boolean;
  peers(): PeerInfo[];
  openChannelCount(): number;
  /** Participants in join order, self included. */
  participantList(): Participant[];
  /** Leaves the room: closes every peer connection and the WebSocket, stops media. */
  close(): void;

  addEventListener<K extends keyof SwitchboardEventMap>(
    type: K,
    listener: (this: Switchboard, event: SwitchboardEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SwitchboardEventMap>(
    type: K,
    listener: (this: Switchboard, event: SwitchboardEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;

  /** Whether `selfId` makes the first offer to `otherId`: the smaller id does. */
  static isInitiator(selfId: string, otherId: string): boolean;
  /** `ws(s)://host/<base path>webrtc/ws/<room>`. */
  static wsUrl(baseUrl: URL | string, room: string): string;
  /** The server's `/webrtc/config` body as an `RTCConfiguration`. */
  static toRtcConfiguration(body: unknown): RTCConfiguration;
  /** Exponential backoff with full jitter, in ms. */
  static backoffMs(attempt: number, maxMs: number): number;
  /** The `exp` claim (Unix seconds) of a JWT, unverified; null when it has none. */
  static tokenExpiry(token: string): number | null;
  /** Milliseconds to wait before refreshing a token expiring at `expSecs`. */
  static refreshDelayMs(expSecs: number, nowMs: number, leadMs: number): number;
}

declare global {
  /** Defined by `<script src="switchboard.js">`. */
  var Switchboard: SwitchboardConstructor;
}

/** The class itself, as the global `Switchboard` holds it. */
export type SwitchboardConstructor = typeof Switchboard;

export { Switchboard };
export default Switchboard;
