/**
 * @file switchboard.js — a dependency-free browser client for the Switchboard
 * WebRTC signaling server.
 *
 * It joins a room over WebSocket, keeps the participant list current, and
 * builds a full mesh of `RTCPeerConnection`s (one per other participant), each
 * with a data channel and, optionally, the local camera/microphone.
 *
 * Load it as a classic script (`<script src="switchboard.js"></script>`, which
 * defines `window.Switchboard`), from a bundler/CommonJS (`module.exports`), or as
 * an ES module through `switchboard.mjs` next to it (`import Switchboard from
 * "./switchboard.mjs"`). Types: `switchboard.d.ts` / `switchboard.d.mts`.
 *
 * The token is passed in the `Sec-WebSocket-Protocol` header
 * (`["switchboard.v1", "bearer." + token]`), never in the URL, so it does not end
 * up in access logs or browser history. REST calls use `Authorization: Bearer`.
 *
 * Negotiation: the participant whose `participant_id` sorts first
 * (lexicographically) creates the peer connection, the data channel and the
 * first offer; the other side answers. Later renegotiations (adding a camera)
 * use the "perfect negotiation" pattern with the same ordering deciding who is
 * polite (the larger id), so offer collisions resolve by themselves.
 *
 * Token lifetime: the server closes a session with 1008 `token_expired` at its
 * token's `exp`. Give a `refreshToken` callback and the client fetches a new
 * token some seconds before that and hands it to the server over the socket
 * (`refresh-token`), so the session goes on; the new token is also used for
 * later reconnects and REST calls.
 *
 * Resume: when the server hands out a resume token (`room-state`), every
 * signaling message is numbered (`seq`) and kept until the server acks it. A
 * connection that drops (network blip, killed or drained server) is resumed:
 * the client reconnects with its token and the last delivered `seq`, keeps
 * every `RTCPeerConnection` and data channel as they are (state goes
 * `reconnecting` → `joined`), gets what it missed and re-sends what was not
 * acked. Messages answered `bus_unavailable` or `delivery_unknown` are re-sent
 * with backoff, in `seq` order, later messages waiting behind them (recipients
 * drop duplicates). Only when the server refuses the
 * resume does it join fresh and rebuild its peers. A peer connection whose ICE
 * fails, or stays disconnected for a few seconds, restarts ICE through
 * signaling instead of being torn down.
 *
 * @example
 * const sb = new Switchboard({ room: "demo", token: jwt });
 * sb.addEventListener("participants", (e) => render(e.detail.participants));
 * sb.addEventListener("message", (e) => console.log(e.detail.participantId, e.detail.data));
 * sb.addEventListener("channel-open", (e) => sb.sendTo(e.detail.participantId, "hello"));
 * sb.connect().catch((err) => console.error("join failed:", err.message));
 */
(function (root, factory) {
  "use strict";
  const Switchboard = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = Switchboard;
    module.exports.Switchboard = Switchboard;
  }
  if (root) {
    root.Switchboard = Switchboard;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  /** WebSocket subprotocol the server selects; the token rides in a second one. */
  const SUBPROTOCOL = "switchboard.v1";
  /** Label of the data channel opened to every peer. */
  const DATA_CHANNEL_LABEL = "switchboard";
  /**
   * Close codes after which reconnecting cannot help (the server refused us on
   * purpose), plus reasons of 1013 that are not transient. 4001 `removed` and
   * 4002 `room_closed` come from the application (server API): rejoining on our
   * own would undo its decision.
   */
  const FATAL_CLOSE_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010, 4001, 4002]);
  const FATAL_CLOSE_REASONS = new Set(["room_full"]);
  /** Refused resumes (1008): not final, the client joins fresh instead. */
  const RESUME_REFUSALS = new Set(["resume_expired", "resume_invalid", "resume_overflow"]);
  /** Message types the server relays; these are numbered and re-sent until acked. */
  const RELAYED_TYPES = new Set(["offer", "answer", "ice-candidate", "media-control", "screen-share-control", "chat-message"]);
  /** Errors after which a numbered message is sent again (with backoff); any other error is final. */
  const RESEND_ERRORS = new Set(["bus_unavailable", "delivery_unknown"]);
  /** Upper bound of the re-send backoff. */
  const RESEND_MAX_BACKOFF_MS = 10000;
  /** A peer connection `disconnected` this long restarts ICE. */
  const ICE_DISCONNECTED_RESTART_MS = 4000;
  /** Default lead time of a token refresh before the token's `exp`. */
  const DEFAULT_REFRESH_LEAD_MS = 30000;
  /** Retry delay after a failed `refreshToken` callback. */
  const REFRESH_RETRY_MS = 5000;
  /**
   * After a `reconnect` hint the server closes the socket itself (1001 "server
   * draining"); if that close has not come this long after the hint's delay,
   * the client closes the socket and moves on.
   */
  const DRAIN_CLOSE_WAIT_MS = 5000;

  /**
   * A participant as the server describes it.
   * @typedef {Object} Participant
   * @property {string} participant_id Server-assigned id of one connection.
   * @property {string} user_id The token's `sub`.
   * @property {string} [username] The token's `name`.
   * @property {string} [joined_at] RFC 3339 time of joining.
   */

  /**
   * Snapshot of one peer (another participant) and our connection to it.
   * @typedef {Object} PeerInfo
   * @property {string} participantId
   * @property {Participant} participant
   * @property {string} connectionState `RTCPeerConnection.connectionState`, or `"new"`.
   * @property {string} channelState `RTCDataChannel.readyState`, or `"none"`.
   * @property {MediaStream|null} remoteStream Remote audio/video, when any arrived.
   */

  /**
   * Options for {@link Switchboard}.
   * @typedef {Object} SwitchboardOptions
   * @property {string} room Room id (1–64 of `[A-Za-z0-9_-]`).
   * @property {string} token JWT issued by your backend.
   * @property {string} [baseUrl] HTTP(S) base URL of the signaling server. Default:
   *   the directory of the page that runs the script (`new URL(".", location.href)`),
   *   which is right only when the signaling server serves that page (as with the
   *   demo, also behind a path prefix). An app served from anywhere else must set it.
   * @property {MediaStreamConstraints|null} [media] Ask for camera/microphone with
   *   these constraints on connect (`{audio: true, video: true}`); null = data only.
   * @property {boolean} [autoReconnect=true] Reconnect after transient closes and
   *   on the server's `reconnect` hint.
   * @property {number} [maxBackoffMs=15000] Upper bound of the reconnect backoff.
   * @property {function(string, ...*): void} [log] Debug logger, e.g. `console.debug`.
   * @property {function(): Promise<string>} [refreshToken] Returns a new JWT for the
   *   same user (e.g. from your backend). Called `refreshLeadMs` before the current
   *   token's `exp`; without it the session ends when the token expires.
   * @property {number} [refreshLeadMs=30000] How long before `exp` to refresh; at most
   *   half the token's remaining lifetime, so short-lived tokens are refreshed too.
   */

  /**
   * Client for one room. Emits (as `CustomEvent`s, data in `event.detail`):
   * - `state` `{state}`: `idle`, `connecting`, `joined`, `reconnecting`, `closed`.
   * - `joined` `{self, participants, resumed}` after each `room-state` (the first one,
   *   any the server sends again to resynchronise a client that fell behind, and the
   *   one that answers a resume, with `resumed: true`: peers and calls were kept).
   * - `participants` `{participants, self}` whenever the list changes.
   * - `peer` `{peer}` (a {@link PeerInfo}) whenever a peer's connection or channel changes.
   * - `channel-open` `{participantId, participant}` when the data channel to a peer
   *   opens (from then on `send`/`sendTo` reach it and `openChannelCount()` counts it).
   * - `participant-left` `{participantId, participant, reason}` when someone leaves the
   *   room; `reason` is the server's (`closed`, `timeout`, `instance_lost`, `draining`, ...).
   * - `participant-updated` `{participantId, participant}` when the application
   *   replaced a participant's `metadata` (server API).
   * - `server-message` `{payload}` for a message the application backend sent
   *   into the room (server API; it has no sender).
   * - `message` `{participantId, participant, data}` for data-channel messages.
   * - `track` `{participantId, stream}` when remote media arrives.
   * - `signal` `{message}` for every server message (raw envelope), for apps that
   *   use `chat-message`, `media-control` etc.
   * - `error` `{code, message, seq}` for server `error` messages and local failures.
   *   With resume on (the server gave a resume token), messages sent through
   *   `signal` carry a `seq`; one answered `bus_unavailable` or `delivery_unknown`
   *   is re-sent by the client itself with backoff (the server drops duplicates), so
   *   the app need not. Without resume the client never re-sends: after
   *   `bus_unavailable` an app may send again; after `delivery_unknown` it should
   *   renegotiate instead.
   * - `reconnect` `{afterMs}` when the server asks us to move (drain). The client
   *   rejoins after `afterMs`, once the server has closed the old socket (1001,
   *   reported as `closed` first); if that close is late it waits for it up to 5 s.
   * - `closed` `{code, reason, willReconnect}` when the WebSocket closes.
   * - `tokenrefreshed` `{expiresAt}` when the server accepted a refreshed token
   *   (`expiresAt` in Unix seconds). A refused one arrives as `error` with the
   *   server's code (`invalid_token`, `token_expired`, `user_mismatch`, ...).
   */
  class Switchboard extends EventTarget {
    /** @param {SwitchboardOptions} options */
    constructor(options) {
      super();
      if (!options || typeof options.room !== "string" || options.room === "") {
        throw new TypeError("Switchboard: options.room is required");
      }
      if (typeof options.token !== "string" || options.token === "") {
        throw new TypeError("Switchboard: options.token is required");
      }
      /** @readonly */ this.room = options.room;
      this._token = options.token;
      this._baseUrl = new URL(options.baseUrl || ".", typeof location !== "undefined" ? location.href : undefined);
      // Relative paths below must resolve inside the base, so it has to end in "/".
      if (!this._baseUrl.pathname.endsWith("/")) this._baseUrl.pathname += "/";
      this._baseUrl.search = "";
      this._baseUrl.hash = "";
      this._mediaConstraints = options.media || null;
      this._autoReconnect = options.autoReconnect !== false;
      this._maxBackoffMs = options.maxBackoffMs || 15000;
      this._log = typeof options.log === "function" ? options.log : function () {};
      this._refreshToken = typeof options.refreshToken === "function" ? options.refreshToken : null;
      this._refreshLeadMs = options.refreshLeadMs >= 0 ? options.refreshLeadMs : DEFAULT_REFRESH_LEAD_MS;
      this._refreshTimer = null;
      /** A token offered with `refresh-token`, not yet confirmed. */
      this._pendingToken = null;

      /** @type {string} */ this.state = "idle";
      /** @type {Participant|null} Ourselves, from the last `room-state`. */
      this.self = null;
      /** @type {Map<string, Participant>} Everyone in the room, self included. */
      this.participants = new Map();
      /** @type {MediaStream|null} */ this.localStream = null;
      /** @type {RTCConfiguration} */ this.rtcConfig = {};

      /** @type {Map<string, Peer>} */ this._peers = new Map();
      /** @type {WebSocket|null} */ this._ws = null;
      this._attempt = 0;
      this._reconnectTimer = null;
      /** Set when a `reconnect` hint's delay has passed but the server has not closed the old socket yet. */
      this._reconnectOnClose = false;
      this._drainCloseTimer = null;
      this._closedByUser = false;

      /** The resume token of the current participant, from `room-state`; null = join fresh. */
      this._resumeToken = null;
      /** Highest delivery `seq` processed. */
      this._lastSeq = 0;
      /** Next client `seq`. */
      this._nextSeq = 1;
      /**
       * Numbered messages without an ack yet: seq -> {msg, waiting}. `waiting`: to go out
       * with the next re-send round, not before (answered `bus_unavailable`, or sent while a
       * round was pending, so it does not overtake an earlier one).
       */
      this._unacked = new Map();
      /** The one re-send round pending (a timer), and how many rounds failed in a row. */
      this._resendTimer = null;
      this._resendAttempt = 0;
      /** The socket has delivered its `room-state`: messages may go out. */
      this._ready = false;
    }

    /**
     * Fetches the ICE configuration, opens the local media if asked, then opens
     * the WebSocket. Resolves once the first `room-state` arrived; rejects if the
     * configuration cannot be fetched or the server refuses the connection.
     * @returns {Promise<void>}
     */
    async connect() {
      this._closedByUser = false;
      this._setState("connecting");
      try {
        this.rtcConfig = await this.fetchConfig();
      } catch (err) {
        this._setState("closed");
        this._emit("error", { code: "config_failed", message: String(err && err.message ? err.message : err) });
        throw err;
      }
      if (this._mediaConstraints && !this.localStream) {
        await this.enableMedia(this._mediaConstraints);
      }
      return this._openSocket();
    }

    /**
     * `GET /webrtc/config` with the token, mapped onto an `RTCConfiguration`.
     * @returns {Promise<RTCConfiguration>}
     */
    async fetchConfig() {
      const res = await fetch(new URL("webrtc/config", this._baseUrl), {
        headers: { Authorization: "Bearer " + this._token },
        cache: "no-store",
      });
      if (!res.ok) {
        let detail = "HTTP " + res.status;
        try {
          const body = await res.json();
          if (body && body.error) detail += " " + body.error.code + ": " + body.error.message;
        } catch (_) {
          // Not JSON: the status alone has to do.
        }
        throw new Error("GET /webrtc/config failed: " + detail);
      }
      return toRtcConfiguration(await res.json());
    }

    /**
     * Opens camera/microphone and adds the tracks to every peer connection
     * (renegotiating as needed).
     * @param {MediaStreamConstraints} [constraints={audio: true, video: true}]
     * @returns {Promise<MediaStream>}
     */
    async enableMedia(constraints) {
      if (!this.localStream) {
        this.localStream = await navigator.mediaDevices.getUserMedia(constraints || { audio: true, video: true });
      }
      for (const peer of this._peers.values()) peer.attachLocalMedia(this.localStream);
      return this.localStream;
    }

    /** Stops the local camera/microphone and removes its tracks from every peer. */
    disableMedia() {
      if (!this.localStream) return;
      for (const peer of this._peers.values()) peer.detachLocalMedia();
      for (const track of this.localStream.getTracks()) track.stop();
      this.localStream = null;
    }

    /**
     * Sends a text (or binary) message over every open data channel.
     * @param {string|ArrayBuffer|Blob} data
     * @returns {number} How many peers it was sent to.
     */
    send(data) {
      let sent = 0;
      for (const peer of this._peers.values()) {
        if (peer.sendData(data)) sent += 1;
      }
      return sent;
    }

    /**
     * Sends a data-channel message to one peer.
     * @param {string} participantId
     * @param {string|ArrayBuffer|Blob} data
     * @returns {boolean} false when no open channel to that peer exists.
     */
    sendTo(participantId, data) {
      const peer = this._peers.get(participantId);
      return peer ? peer.sendData(data) : false;
    }

    /**
     * Sends a raw signaling message through the server, e.g.
     * `signal("chat-message", {text: "hi"})` (broadcast) or with `to`.
     * @param {string} type
     * @param {*} payload Any JSON value.
     * @param {string} [to] Target participant id; omitted = broadcast where allowed.
     * @returns {boolean} false when the WebSocket is not open.
     */
    signal(type, payload, to) {
      const msg = { type: type, payload: payload === undefined ? {} : payload };
      if (to) msg.to = to;
      if (this._resumeToken !== null && RELAYED_TYPES.has(type)) {
        // Numbered and kept until acked: sent now if the socket is up, else on resume.
        msg.seq = this._nextSeq++;
        // Behind a pending re-send round it waits its turn: the receiver gets the seqs in order.
        const waiting = this._resendTimer !== null;
        this._unacked.set(msg.seq, { msg: msg, waiting: waiting });
        if (!waiting) this._sendRaw(msg);
        return true;
      }
      return this._sendRaw(msg);
    }

    /** Sends `msg` on the open, joined socket; false when there is none. */
    _sendRaw(msg) {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN || !this._ready) return false;
      ws.send(JSON.stringify(msg));
      return true;
    }

    /**
     * Sends unacked messages again, in `seq` order: every one after a resume (`all`), else
     * those waiting for this round. One round for all of them, never a timer each: separate
     * timers would let an ICE candidate overtake its offer.
     */
    _resendUnacked(all) {
      clearTimeout(this._resendTimer);
      this._resendTimer = null;
      const seqs = Array.from(this._unacked.keys()).sort((a, b) => a - b);
      for (const seq of seqs) {
        const entry = this._unacked.get(seq);
        if (!all && !entry.waiting) continue;
        entry.waiting = false;
        this._sendRaw(entry.msg);
      }
    }

    /** The server answered a numbered message: acked, to be re-sent, or refused for good. */
    _onAnswer(seq, errorCode) {
      const entry = this._unacked.get(seq);
      if (!entry) return;
      if (errorCode && RESEND_ERRORS.has(errorCode)) {
        entry.waiting = true;
        if (this._resendTimer === null) {
          this._resendTimer = setTimeout(
            () => this._resendUnacked(false),
            backoffMs(this._resendAttempt++, RESEND_MAX_BACKOFF_MS)
          );
        }
        return;
      }
      this._unacked.delete(seq);
      // Through again: the next outage starts its backoff from the beginning.
      if (errorCode === null && this._resendTimer === null) this._resendAttempt = 0;
    }

    /** Forgets the participant's resume state (a fresh join follows). */
    _forgetResume() {
      this._resumeToken = null;
      this._lastSeq = 0;
      this._nextSeq = 1;
      clearTimeout(this._resendTimer);
      this._resendTimer = null;
      this._resendAttempt = 0;
      this._unacked.clear();
    }

    /** @returns {PeerInfo[]} Every other participant and our connection to it. */
    peers() {
      return Array.from(this._peers.values(), (p) => p.info());
    }

    /** @returns {number} Peers whose data channel is open. */
    openChannelCount() {
      let n = 0;
      for (const peer of this._peers.values()) if (peer.channelState() === "open") n += 1;
      return n;
    }

    /** Leaves the room: closes every peer connection and the WebSocket, stops media. */
    close() {
      this._closedByUser = true;
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._cancelDrainWait();
      this._cancelRefresh();
      this._closePeers();
      if (this._ws) {
        try {
          this._ws.close(1000, "bye");
        } catch (_) {
          // Already closing.
        }
        this._ws = null;
      }
      this.disableMedia();
      this.participants.clear();
      this._forgetResume();
      this._setState("closed");
      this._emitParticipants();
    }

    // ---- WebSocket ------------------------------------------------------

    /** @returns {Promise<void>} */
    _openSocket() {
      let url = wsUrl(this._baseUrl, this.room);
      const resuming = this._resumeToken !== null;
      if (resuming) {
        url += "?resume=" + encodeURIComponent(this._resumeToken) + "&last_seq=" + this._lastSeq;
      }
      this._log("switchboard: opening", resuming ? "(resume)" : "", wsUrl(this._baseUrl, this.room));
      this._ready = false;
      let ws;
      try {
        ws = new WebSocket(url, [SUBPROTOCOL, "bearer." + this._token]);
      } catch (err) {
        this._setState("closed");
        return Promise.reject(err);
      }
      this._ws = ws;
      return new Promise((resolve, reject) => {
        let settled = false;
        ws.onmessage = (ev) => {
          if (this._ws !== ws) return;
          let msg;
          try {
            msg = JSON.parse(ev.data);
          } catch (_) {
            this._emit("error", { code: "invalid_message", message: "server sent non-JSON" });
            return;
          }
          this._onServerMessage(msg);
          if (!settled && msg.type === "room-state") {
            settled = true;
            this._attempt = 0;
            resolve();
          }
        };
        ws.onclose = (ev) => {
          if (this._ws !== ws) return; // A superseded socket (after a reconnect hint).
          this._ws = null;
          this._ready = false;
          this._cancelRefresh();
          if (RESUME_REFUSALS.has(ev.reason)) {
            // The server holds this participant no longer: join fresh, rebuild the peers.
            this._forgetResume();
          }
          const willReconnect = this._shouldReconnect(ev.code, ev.reason);
          // With a resume token the peers and the participant list survive the gap.
          const resume = willReconnect && this._resumeToken !== null;
          this._log("switchboard: closed", ev.code, ev.reason, willReconnect ? "(reconnecting)" : "");
          this._emit("closed", { code: ev.code, reason: ev.reason, willReconnect: willReconnect });
          if (!settled) {
            settled = true;
            reject(new Error("WebSocket closed before joining: " + ev.code + " " + (ev.reason || "")));
          }
          if (!resume) {
            this._closePeers();
            this.participants.clear();
            this._emitParticipants();
          }
          if (!willReconnect) this._forgetResume();
          if (willReconnect) {
            // A `reconnect` hint whose delay has passed waited for this close;
            // a pending one keeps its own delay; otherwise back off.
            if (this._reconnectOnClose) {
              this._cancelDrainWait();
              this._reconnectNow();
            } else if (this._reconnectTimer) this._setState("reconnecting");
            else this._scheduleReconnect(backoffMs(this._attempt++, this._maxBackoffMs));
          } else {
            this._setState("closed");
          }
        };
        // onerror is always followed by onclose, which carries the details.
        ws.onerror = () => this._log("switchboard: websocket error");
      });
    }

    _shouldReconnect(code, reason) {
      if (this._closedByUser || !this._autoReconnect) return false;
      // Already scheduled by a `reconnect` hint.
      if (this._reconnectTimer || this._reconnectOnClose) return true;
      // An expired token is final unless the app can give us a new one.
      if (reason === "token_expired") return this._refreshToken !== null;
      if (RESUME_REFUSALS.has(reason)) return true;
      return !FATAL_CLOSE_CODES.has(code) && !FATAL_CLOSE_REASONS.has(reason);
    }

    _scheduleReconnect(delayMs) {
      clearTimeout(this._reconnectTimer);
      this._setState("reconnecting");
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (this._closedByUser) return;
        const old = this._ws;
        if (old) {
          // After a `reconnect` hint the server closes this socket (1001): wait
          // for that close, so it is seen and reported, then reconnect from its
          // handler. Should it not come, close the socket ourselves.
          this._reconnectOnClose = true;
          this._drainCloseTimer = setTimeout(() => {
            this._drainCloseTimer = null;
            if (this._ws === old) old.close(1000, "reconnecting");
          }, DRAIN_CLOSE_WAIT_MS);
          return;
        }
        this._reconnectNow();
      }, delayMs);
    }

    _cancelDrainWait() {
      this._reconnectOnClose = false;
      clearTimeout(this._drainCloseTimer);
      this._drainCloseTimer = null;
    }

    /** Opens a new socket (fresh token and ICE config first); the old one is closed. */
    _reconnectNow() {
      // A resume keeps the peers (their media never needed the server); a fresh join rebuilds them.
      if (this._resumeToken === null) {
        this._closePeers();
        this._setState("connecting");
      } else {
        this._setState("reconnecting");
      }
      // A token that has run out cannot join: ask the app for a new one first.
      this._tokenForJoin()
        .catch((err) => {
          // Join with the old token; its refusal decides about the next attempt.
          this._emit("error", { code: "refresh_failed", message: String(err && err.message ? err.message : err) });
        })
        // Fresh config: TURN credentials are time-limited.
        .then(() => this.fetchConfig())
        .then((cfg) => {
          this.rtcConfig = cfg;
        })
        .catch((err) => this._log("switchboard: keeping the old ICE config", String(err)))
        .then(() => this._openSocket())
        .catch((err) => this._log("switchboard: reconnect failed", String(err)));
    }

    _onServerMessage(msg) {
      const numbered = typeof msg.seq === "number" && msg.type !== "ack" && msg.type !== "error";
      if (numbered) {
        // A delivery seq: each message once, in order.
        if (msg.seq <= this._lastSeq) return;
        this._lastSeq = msg.seq;
      }
      if (msg.type === "ack") {
        this._onAnswer(msg.seq, null);
        return;
      }
      this._emit("signal", { message: msg });
      const payload = msg.payload || {};
      switch (msg.type) {
        case "room-state":
          if (!this._ready && !payload.resumed) {
            // A fresh join: a new participant, numbering from 1.
            this._forgetResume();
          }
          if (typeof payload.resume_token === "string") this._resumeToken = payload.resume_token;
          this._onRoomState(payload);
          this._scheduleRefresh();
          if (!this._ready) {
            this._ready = true;
            if (payload.resumed) this._resendUnacked(true);
          }
          break;
        case "token-refreshed":
          this._onTokenRefreshed(payload);
          break;
        case "user-joined":
          if (payload.participant_id) {
            this.participants.set(payload.participant_id, payload);
            this._emitParticipants();
            this._ensurePeer(payload.participant_id, true);
          }
          break;
        case "user-left":
          if (payload.participant_id) {
            const id = payload.participant_id;
            const who = this.participants.get(id) || payload;
            this.participants.delete(id);
            this._removePeer(id);
            this._emitParticipants();
            this._emit("participant-left", { participantId: id, participant: who, reason: String(payload.reason || "") });
          }
          break;
        case "participant-updated":
          if (payload.participant_id && this.participants.has(payload.participant_id)) {
            this.participants.set(payload.participant_id, payload);
            if (this.self && this.self.participant_id === payload.participant_id) {
              this.self = Object.assign({}, this.self, { metadata: payload.metadata });
            }
            this._emitParticipants();
            this._emit("participant-updated", { participantId: payload.participant_id, participant: payload });
          }
          break;
        case "server-message":
          this._emit("server-message", { payload: msg.payload });
          break;
        case "offer":
        case "answer":
          if (msg.sender_id) this._onDescription(msg.sender_id, msg.type, payload);
          break;
        case "ice-candidate":
          if (msg.sender_id) this._onCandidate(msg.sender_id, payload);
          break;
        case "reconnect": {
          const afterMs = Math.max(0, Number(payload.after_ms) || 0);
          this._emit("reconnect", { afterMs: afterMs });
          if (this._autoReconnect && !this._closedByUser) this._scheduleReconnect(afterMs);
          break;
        }
        case "error":
          this._log("switchboard: server error", payload.code, payload.message);
          if (typeof msg.seq === "number") this._onAnswer(msg.seq, payload.code);
          this._emit("error", { code: payload.code, message: payload.message, seq: msg.seq });
          break;
        default:
          // pong, chat-message, media-control…: available through the `signal` event.
          break;
      }
    }

    _onRoomState(payload) {
      this.self = payload.self || null;
      this.participants.clear();
      for (const p of payload.participants || []) {
        if (p && p.participant_id) this.participants.set(p.participant_id, p);
      }
      if (this.self && !this.participants.has(this.self.participant_id)) {
        this.participants.set(this.self.participant_id, this.self);
      }
      // A room-state may come again mid-session (the server re-sends it when this
      // client missed presence updates): it replaces the view, so peers that are
      // no longer listed are gone.
      for (const id of Array.from(this._peers.keys())) {
        if (!this.participants.has(id)) this._removePeer(id);
      }
      this._setState("joined");
      this._emit("joined", { self: this.self, participants: this.participantList(), resumed: payload.resumed === true });
      this._emitParticipants();
      for (const id of this.participants.keys()) this._ensurePeer(id, true);
    }

    /** @returns {Participant[]} Participants in join order, self included. */
    participantList() {
      return Array.from(this.participants.values()).sort((a, b) =>
        String(a.joined_at || "").localeCompare(String(b.joined_at || "")) ||
        String(a.participant_id).localeCompare(String(b.participant_id))
      );
    }

    // ---- token refresh --------------------------------------------------

    /** Arms the refresh timer for the current token (no-op without a callback). */
    _scheduleRefresh() {
      this._cancelRefresh();
      if (!this._refreshToken) return;
      const exp = tokenExpiry(this._token);
      if (exp === null) return;
      const delay = refreshDelayMs(exp, Date.now(), this._refreshLeadMs);
      this._log("switchboard: token refresh in", delay, "ms");
      this._refreshTimer = setTimeout(() => this._refreshNow(), delay);
    }

    _cancelRefresh() {
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
    }

    /**
     * Gets a new token from the app and hands it to the server over the socket.
     * The token becomes the client's own only once the server confirmed it
     * (`token-refreshed`); until then, and after a refusal, it tries again every
     * few seconds while the current token lasts.
     */
    async _refreshNow() {
      this._refreshTimer = null;
      try {
        const token = await this._refreshToken();
        if (typeof token !== "string" || token === "") throw new Error("refreshToken returned no token");
        if (this._closedByUser) return;
        this._pendingToken = token;
        this.signal("refresh-token", { token: token });
      } catch (err) {
        this._emit("error", { code: "refresh_failed", message: String(err && err.message ? err.message : err) });
      }
      const exp = tokenExpiry(this._token);
      if (exp !== null && exp * 1000 - Date.now() > REFRESH_RETRY_MS && this._ws) {
        this._refreshTimer = setTimeout(() => this._refreshNow(), REFRESH_RETRY_MS);
      }
    }

    /** `token-refreshed`: the offered token is now the session's. */
    _onTokenRefreshed(payload) {
      if (this._pendingToken) this._token = this._pendingToken;
      this._pendingToken = null;
      if (typeof payload.resume_token === "string") this._resumeToken = payload.resume_token;
      this._scheduleRefresh();
      this._emit("tokenrefreshed", { expiresAt: Number(payload.expires_at) || null });
    }

    /** Resolves once `this._token` is usable for a join (refreshed if it expired). */
    async _tokenForJoin() {
      const exp = tokenExpiry(this._token);
      if (!this._refreshToken || exp === null || exp * 1000 > Date.now()) return;
      const token = await this._refreshToken();
      if (typeof token === "string" && token !== "") this._token = token;
    }

    // ---- peers ----------------------------------------------------------

    /**
     * Returns the peer for `id`, creating it when we are the side that offers
     * (or when `force` because the other side already sent us something).
     */
    _ensurePeer(id, onlyIfInitiator, force) {
      if (!this.self || id === this.self.participant_id) return null;
      let peer = this._peers.get(id);
      if (peer) return peer;
      const initiator = isInitiator(this.self.participant_id, id);
      if (onlyIfInitiator && !initiator && !force) return null;
      peer = new Peer(this, id, initiator);
      this._peers.set(id, peer);
      peer.start();
      this._emitPeer(peer);
      return peer;
    }

    _onDescription(from, type, payload) {
      // Only an offer may create the peer (the other side initiated); a stray answer may not.
      const peer = this._ensurePeer(from, true, type === "offer");
      if (!peer) return;
      peer.onDescription({ type: type, sdp: payload.sdp }).catch((err) => this._peerError(peer, err));
    }

    _onCandidate(from, payload) {
      const peer = this._peers.get(from);
      if (!peer) return;
      peer.onCandidate(payload).catch((err) => this._peerError(peer, err));
    }

    _peerError(peer, err) {
      this._log("switchboard: peer", peer.id, "error", String(err));
      this._emit("error", { code: "peer_failed", message: peer.id + ": " + String(err && err.message ? err.message : err) });
    }

    _removePeer(id) {
      const peer = this._peers.get(id);
      if (!peer) return;
      this._peers.delete(id);
      peer.close();
      this._emitPeer(peer);
    }

    _closePeers() {
      for (const id of Array.from(this._peers.keys())) this._removePeer(id);
    }

    // ---- events ---------------------------------------------------------

    _setState(state) {
      if (this.state === state) return;
      this.state = state;
      this._emit("state", { state: state });
    }

    _emitParticipants() {
      this._emit("participants", { participants: this.participantList(), self: this.self });
    }

    _emitPeer(peer) {
      this._emit("peer", { peer: peer.info() });
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }
  }

  /**
   * One RTCPeerConnection to another participant, with perfect negotiation.
   * @private
   */
  class Peer {
    /**
     * @param {Switchboard} sb
     * @param {string} id The other participant's id.
     * @param {boolean} initiator Whether we create the channel and first offer.
     */
    constructor(sb, id, initiator) {
      this.sb = sb;
      this.id = id;
      this.initiator = initiator;
      // The initiator is the impolite side: on an offer collision it keeps its own.
      this.polite = !initiator;
      this.pc = new RTCPeerConnection(sb.rtcConfig);
      /** @type {RTCDataChannel|null} */ this.channel = null;
      /** @type {MediaStream|null} */ this.remoteStream = null;
      /** @type {RTCRtpSender[]} */ this.senders = [];
      this.makingOffer = false;
      this.ignoreOffer = false;
      this.settingRemoteAnswer = false;
      this.closed = false;
      this.disconnectedTimer = null;
    }

    start() {
      const pc = this.pc;
      pc.onicecandidate = (ev) => {
        // A null candidate marks the end of gathering; nothing to relay.
        if (ev.candidate) this.sb.signal("ice-candidate", ev.candidate.toJSON(), this.id);
      };
      pc.onnegotiationneeded = () => {
        this.sb._log("switchboard: peer", this.id, "negotiation needed in", pc.signalingState);
        this.negotiate();
      };
      pc.onconnectionstatechange = () => {
        // A failed path (network change, NAT timeout) may come back with new candidates; the
        // offering side restarts ICE, which renegotiates through `negotiationneeded`. One that
        // stays disconnected for a few seconds is treated the same way.
        clearTimeout(this.disconnectedTimer);
        if (pc.connectionState === "failed") this.restartIce();
        else if (pc.connectionState === "disconnected") {
          this.disconnectedTimer = setTimeout(() => {
            if (pc.connectionState === "disconnected") this.restartIce();
          }, ICE_DISCONNECTED_RESTART_MS);
        }
        this.sb._emitPeer(this);
      };
      pc.ontrack = (ev) => {
        if (!this.remoteStream) this.remoteStream = new MediaStream();
        if (!this.remoteStream.getTracks().includes(ev.track)) this.remoteStream.addTrack(ev.track);
        ev.track.onended = () => this.sb._emitPeer(this);
        this.sb._emit("track", { participantId: this.id, stream: this.remoteStream });
        this.sb._emitPeer(this);
      };
      pc.ondatachannel = (ev) => this.useChannel(ev.channel);
      if (this.initiator) {
        // Creating the channel first makes it part of the very first offer.
        this.useChannel(pc.createDataChannel(DATA_CHANNEL_LABEL, { ordered: true }));
      }
      if (this.sb.localStream) this.attachLocalMedia(this.sb.localStream);
    }

    /** ICE restart through signaling (the offering side's new offer carries new credentials). */
    restartIce() {
      if (this.closed || !this.initiator || typeof this.pc.restartIce !== "function") return;
      this.sb._log("switchboard: peer", this.id, "restarting ICE");
      this.pc.restartIce();
    }

    /** @param {RTCDataChannel} channel */
    useChannel(channel) {
      this.channel = channel;
      const changed = () => this.sb._emitPeer(this);
      channel.onopen = () => {
        changed();
        this.sb._emit("channel-open", {
          participantId: this.id,
          participant: this.sb.participants.get(this.id) || null,
        });
      };
      channel.onclose = changed;
      channel.onmessage = (ev) => {
        this.sb._emit("message", {
          participantId: this.id,
          participant: this.sb.participants.get(this.id) || null,
          data: ev.data,
        });
      };
    }

    /** @param {MediaStream} stream */
    attachLocalMedia(stream) {
      if (this.closed) return;
      for (const track of stream.getTracks()) {
        if (!this.senders.some((s) => s.track === track)) this.senders.push(this.pc.addTrack(track, stream));
      }
    }

    detachLocalMedia() {
      if (this.closed) return;
      for (const sender of this.senders) {
        try {
          this.pc.removeTrack(sender);
        } catch (_) {
          // The connection may be closing; nothing to undo then.
        }
      }
      this.senders = [];
    }

    async negotiate() {
      // The polite side waits for the initiator's first offer instead of racing it.
      if (this.closed || (!this.initiator && !this.pc.remoteDescription)) return;
      try {
        this.makingOffer = true;
        await this.pc.setLocalDescription();
        this.sendLocalDescription();
      } catch (err) {
        this.sb._peerError(this, err);
      } finally {
        this.makingOffer = false;
      }
    }

    /** @param {RTCSessionDescriptionInit} description */
    async onDescription(description) {
      if (this.closed) return;
      const pc = this.pc;
      // An offer that arrives while our answer from the other side is still being applied is
      // not a collision: that answer takes us to stable before the offer is applied (the
      // browser queues both). Ignoring it would leave the other side waiting forever.
      const readyForOffer = !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const collision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && collision;
      this.sb._log("switchboard: peer", this.id, "got", description.type, "in", pc.signalingState, this.ignoreOffer ? "(ignored: collision)" : "");
      if (this.ignoreOffer) return;
      this.settingRemoteAnswer = description.type === "answer";
      try {
        await pc.setRemoteDescription(description); // Rolls back our own offer when polite.
      } finally {
        this.settingRemoteAnswer = false;
      }
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this.sendLocalDescription();
      }
    }

    /** Relays the offer or answer just set locally to the other participant. */
    sendLocalDescription() {
      const desc = this.pc.localDescription;
      if (!desc) return;
      this.sb._log("switchboard: peer", this.id, "sending", desc.type);
      this.sb.signal(desc.type, { type: desc.type, sdp: desc.sdp }, this.id);
    }

    /** @param {RTCIceCandidateInit} candidate */
    async onCandidate(candidate) {
      if (this.closed) return;
      try {
        await this.pc.addIceCandidate(candidate);
      } catch (err) {
        // Candidates for an offer we ignored in a collision are expected to fail.
        if (!this.ignoreOffer) throw err;
      }
    }

    /** @returns {boolean} */
    sendData(data) {
      if (!this.channel || this.channel.readyState !== "open") return false;
      this.channel.send(data);
      return true;
    }

    channelState() {
      return this.channel ? this.channel.readyState : "none";
    }

    /** @returns {PeerInfo} */
    info() {
      return {
        participantId: this.id,
        participant: this.sb.participants.get(this.id) || { participant_id: this.id, user_id: "" },
        connectionState: this.closed ? "closed" : this.pc.connectionState,
        channelState: this.closed ? "closed" : this.channelState(),
        remoteStream: this.remoteStream,
      };
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.disconnectedTimer);
      if (this.channel) this.channel.close();
      this.pc.close();
    }
  }

  // ---- pure helpers (exported for tests and apps) ------------------------

  /**
   * Whether `selfId` makes the first offer to `otherId`: the smaller id does.
   * @param {string} selfId
   * @param {string} otherId
   * @returns {boolean}
   */
  function isInitiator(selfId, otherId) {
    return String(selfId) < String(otherId);
  }

  /**
   * The WebSocket URL of a room: `ws(s)://host/<base path>webrtc/ws/<room>`.
   * @param {URL|string} baseUrl HTTP(S) base.
   * @param {string} room
   * @returns {string}
   */
  function wsUrl(baseUrl, room) {
    const url = new URL("webrtc/ws/" + encodeURIComponent(room), baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.toString();
  }

  /**
   * Maps the server's `/webrtc/config` body onto an `RTCConfiguration`, dropping
   * fields the browser would reject.
   * @param {Object} body
   * @returns {RTCConfiguration}
   */
  function toRtcConfiguration(body) {
    const cfg = { iceServers: [] };
    for (const s of (body && body.iceServers) || []) {
      if (!s || !s.urls || (Array.isArray(s.urls) && s.urls.length === 0)) continue;
      const server = { urls: s.urls };
      if (s.username) server.username = s.username;
      if (s.credential) server.credential = s.credential;
      cfg.iceServers.push(server);
    }
    if (body && body.iceTransportPolicy) cfg.iceTransportPolicy = body.iceTransportPolicy;
    if (body && body.bundlePolicy) cfg.bundlePolicy = body.bundlePolicy;
    if (body && body.rtcpMuxPolicy) cfg.rtcpMuxPolicy = body.rtcpMuxPolicy;
    return cfg;
  }

  /**
   * The `exp` claim (Unix seconds) of a JWT, read without verifying it (the
   * server does that); null when the token has none or is not a JWT.
   * @param {string} token
   * @returns {number|null}
   */
  function tokenExpiry(token) {
    try {
      const part = String(token).split(".")[1];
      if (!part) return null;
      const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
      const claims = JSON.parse(atob(b64));
      return typeof claims.exp === "number" && isFinite(claims.exp) ? claims.exp : null;
    } catch (_) {
      return null;
    }
  }

  /**
   * How long to wait before refreshing a token that expires at `expSecs`:
   * `leadMs` before expiry, but never less than half of the time left, so a
   * token living only a few seconds is still refreshed in time.
   * @param {number} expSecs Unix seconds.
   * @param {number} nowMs `Date.now()`.
   * @param {number} leadMs
   * @returns {number} Milliseconds, at least 0.
   */
  function refreshDelayMs(expSecs, nowMs, leadMs) {
    const left = expSecs * 1000 - nowMs;
    if (left <= 0) return 0;
    return Math.round(Math.max(left - leadMs, left / 2));
  }

  /**
   * Exponential backoff with full jitter: 0.5 s, 1 s, 2 s … up to `maxMs`.
   * @param {number} attempt 0-based.
   * @param {number} maxMs
   * @returns {number}
   */
  function backoffMs(attempt, maxMs) {
    const ceiling = Math.min(maxMs, 500 * Math.pow(2, Math.min(attempt, 10)));
    return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
  }

  Switchboard.isInitiator = isInitiator;
  Switchboard.wsUrl = wsUrl;
  Switchboard.toRtcConfiguration = toRtcConfiguration;
  Switchboard.backoffMs = backoffMs;
  Switchboard.tokenExpiry = tokenExpiry;
  Switchboard.refreshDelayMs = refreshDelayMs;
  return Switchboard;
});
