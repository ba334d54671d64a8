// src/backoff.ts
var DEFAULT_MIN_DELAY = 500;
var DEFAULT_MAX_DELAY = 2e4;
function backoff(attempt, minDelay = DEFAULT_MIN_DELAY, maxDelay = DEFAULT_MAX_DELAY, random = Math.random) {
  const low = Math.max(0, minDelay);
  const high = Math.max(low, maxDelay);
  const ceiling = Math.min(high, low * 2 ** Math.min(Math.max(0, attempt), 64));
  return Math.floor(random() * ceiling);
}

// src/codes.ts
var CloseCode = {
  /** The client closed on purpose (`close()`). */
  normal: 1e3,
  /** The server is shutting down. */
  goingAway: 1001,
  protocolError: 1002,
  unsupportedData: 1003,
  /** No close frame: the network or the process went away. */
  abnormal: 1006,
  invalidPayload: 1007,
  /** Policy violation; Snorky uses it for a slow consumer whose queue overflowed. */
  policyViolation: 1008,
  /** A frame larger than the server's maximum. */
  messageTooBig: 1009,
  mandatoryExtension: 1010,
  internalError: 1011,
  tlsHandshake: 1015,
  /** The web application revoked this connection's identity (a logout): do not reconnect. */
  revoked: 4501
};
var TERMINAL_CODES = [
  CloseCode.protocolError,
  CloseCode.unsupportedData,
  CloseCode.invalidPayload,
  CloseCode.mandatoryExtension,
  CloseCode.tlsHandshake
];
function shouldReconnect(code, sockjs = false) {
  if (sockjs && (code === CloseCode.protocolError || code >= 2e3 && code <= 2999)) return true;
  if (TERMINAL_CODES.includes(code)) return false;
  return !(code >= 4500 && code <= 4999);
}
function lostMessages(code) {
  return code === CloseCode.policyViolation;
}
var ErrorCode = {
  /** The server answered the call with an error; the message is its text. */
  server: "server",
  /** The connection dropped after the call was sent; it may or may not have taken effect. */
  disconnected: "disconnected",
  /** The client is not connected and is not going to reconnect. */
  notConnected: "notConnected",
  /** The call waited longer than `queueTimeout` for a connection. */
  timeout: "timeout",
  /** The params could not be serialized as JSON; nothing was sent. */
  invalidParams: "invalidParams",
  /** `close()` was called. */
  closed: "closed",
  /** `fetchWithSubscription` got a failed or token-less response. */
  http: "http"
};

// src/errors.ts
var SnorkyError = class extends Error {
  constructor(code, message, response) {
    super(message);
    this.name = "SnorkyError";
    this.code = code;
    if (response) this.response = response;
  }
};

// src/fetch.ts
async function fetchWithSubscription(url, init = {}) {
  const headers = new Headers(init.headers);
  headers.set("X-Snorky", "Subscribe");
  if (!headers.has("Accept")) headers.set("Accept", "application/json");
  const response = await fetch(url, { ...init, headers });
  if (!response.ok) {
    throw new SnorkyError(ErrorCode.http, `${String(url)} answered HTTP ${response.status}`, response);
  }
  const subscriptionToken = response.headers.get("X-Subscription-Token");
  if (!subscriptionToken) {
    throw new SnorkyError(ErrorCode.http, `${String(url)} sent no X-Subscription-Token header`, response);
  }
  const data = await response.json();
  return { response, data, subscriptionToken };
}

// src/signal.ts
var Signal = class {
  constructor() {
    this.bindings = [];
  }
  /**
   * Calls `listener` (with `this` set to `context`, if given) on every
   * dispatch until it is removed. Adding the same listener and context twice
   * has no effect. Returns a function that removes the listener, handy in a
   * React effect's cleanup.
   */
  add(listener, context) {
    return this.bind(listener, context, false);
  }
  /** Like {@link add}, but the listener is removed after its first call. */
  addOnce(listener, context) {
    return this.bind(listener, context, true);
  }
  /** Removes a listener added with the same function and context. */
  remove(listener, context) {
    this.bindings = this.bindings.filter((b) => b.listener !== listener || b.context !== context);
  }
  /** Removes every listener. */
  removeAll() {
    this.bindings = [];
  }
  /** How many listeners are attached. */
  get listenerCount() {
    return this.bindings.length;
  }
  /**
   * Calls every listener with `value`, in the order they were added.
   *
   * A listener that throws does not stop the others, nor the client that is
   * dispatching: the error is reported with `console.error`. Listeners added
   * during a dispatch are first called on the next one.
   */
  dispatch(value) {
    for (const binding of this.bindings.slice()) {
      if (binding.once) this.remove(binding.listener, binding.context);
      try {
        binding.listener.call(binding.context, value);
      } catch (error) {
        console.error("Snorky: a signal listener threw", error);
      }
    }
  }
  bind(listener, context, once) {
    if (typeof listener !== "function") throw new TypeError("Signal listener must be a function");
    if (!this.bindings.some((b) => b.listener === listener && b.context === context)) {
      this.bindings.push({ listener, context, once });
    }
    return () => this.remove(listener, context);
  }
};

// src/services/base.ts
var RPCService = class {
  constructor(name, snorky) {
    /** Every message the service pushes without a request, before it is handled. */
    this.notificationReceived = new Signal();
    if (typeof name !== "string" || !snorky) throw new TypeError("Bad arguments for service constructor");
    this.name = name;
    this.snorky = snorky;
  }
  /**
   * Sends a command and resolves with the server's `data`, or rejects with a
   * {@link SnorkyError} whose message is the server's error text.
   */
  call(command, params = {}) {
    return this.snorky._call(this.name, command, params);
  }
  /** Snorky 0.1's name for {@link call}. */
  rpcCall(command, params = {}) {
    return this.call(command, params);
  }
  /** Handles a pushed message; subclasses override it and ignore types they do not know. */
  onNotification(_message) {
  }
  /**
   * Called by the client right after a reconnection, before queued calls are
   * sent: re-issue what makes the server's state for this connection match the
   * client's (subscriptions, memberships...). Use {@link restoreCall}.
   */
  restore() {
  }
  /** Called by the client when the connection closes, with the close code. */
  connectionLost(_code) {
  }
  /**
   * Sends a call that restores state after a reconnection. The client waits
   * for these before dispatching `restored`, and reports server refusals on
   * `restoreFailed`. The promise never rejects: it resolves with the data, or
   * with `undefined` after calling `onRefused` with the server's error.
   * A call lost to another disconnection is neither: it will be retried by the
   * next restore.
   */
  restoreCall(command, params, onRefused) {
    return this.snorky._call(this.name, command, params, true).then(
      (data) => data,
      (error) => {
        if (error instanceof SnorkyError && error.code === ErrorCode.server) onRefused(error);
        return void 0;
      }
    );
  }
  /** @internal Entry point of the client for a pushed (non-reply) message. */
  _handleMessage(message) {
    this.notificationReceived.dispatch(message);
    this.onNotification(message);
  }
  /** @internal */
  _restore() {
    this.restore();
  }
  /** @internal */
  _connectionLost(code) {
    this.connectionLost(code);
  }
  /**
   * Adds one method per command, each taking a params object, as Snorky 0.1
   * did: `MyService.addRPCMethods(["vote"])` then `service.vote({option: 2})`.
   */
  static addRPCMethods(commands) {
    const proto = this.prototype;
    for (const command of commands) {
      if (command in proto) throw new Error(`Method "${command}" already exists; refusing to overwrite it`);
      proto[command] = function(params) {
        return this.call(command, params ?? {});
      };
    }
  }
};
function afterSettled(promise, effect) {
  return promise.then(
    (value) => {
      effect();
      return value;
    },
    (error) => {
      effect();
      throw error;
    }
  );
}
function jsonKey(value) {
  if (Array.isArray(value)) return `[${value.map(jsonKey).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const object = value;
    const fields = Object.keys(object).filter((key) => object[key] !== void 0).sort().map((key) => `${JSON.stringify(key)}:${jsonKey(object[key])}`);
    return `{${fields.join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

// src/services/chat.ts
var Chat = class extends RPCService {
  constructor() {
    super(...arguments);
    /** A message sent to a joined channel (this connection's own included). */
    this.messageReceived = new Signal();
    /** Someone joined or left a joined channel. Members are updated before it is dispatched. */
    this.presenceReceived = new Signal();
    /** Another connection of this user read a channel. */
    this.readReceived = new Signal();
    /** The member list of a channel changed (join, presence, rejoin, leave). */
    this.membersChanged = new Signal();
    this.rooms = /* @__PURE__ */ new Map();
  }
  /** Joins `channel`; resolves with `{members}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
  join(params) {
    return this.call("join", params).then((data) => {
      this.setMembers(params.channel, data?.members ?? []);
      return data;
    });
  }
  /** Leaves `channel`. Rejects with `"Not joined"`. */
  leave(params) {
    return afterSettled(this.call("leave", params), () => {
      if (this.rooms.delete(jsonKey(params.channel))) this.membersChanged.dispatch({ channel: params.channel, members: [] });
    });
  }
  /** Sends `body` (any JSON) to `channel`. Rejects with `"Not joined"`. */
  send(params) {
    return this.call("send", params);
  }
  /** Tells this user's other connections that `channel` was read. */
  read(params) {
    return this.call("read", params);
  }
  /** The members of a joined channel (a copy), or `[]`. */
  getMembers(channel) {
    return [...this.rooms.get(jsonKey(channel))?.members ?? []];
  }
  /** The channels this client has joined (and rejoins after a reconnection). */
  get channels() {
    return [...this.rooms.values()].map((room) => room.channel);
  }
  onNotification(message) {
    switch (message.type) {
      case "message":
        this.messageReceived.dispatch(message);
        break;
      case "presence": {
        const presence = message;
        const room = this.rooms.get(jsonKey(presence.channel));
        if (room) {
          const others = room.members.filter((member) => member !== presence.from);
          this.setMembers(room.channel, presence.status === "joined" ? [...others, presence.from] : others);
        }
        this.presenceReceived.dispatch(presence);
        break;
      }
      case "read":
        this.readReceived.dispatch(message);
        break;
    }
  }
  restore() {
    for (const [key, room] of this.rooms) {
      void this.restoreCall("join", { channel: room.channel }, () => {
        this.rooms.delete(key);
        this.membersChanged.dispatch({ channel: room.channel, members: [] });
      }).then((data) => {
        if (data !== void 0) this.setMembers(room.channel, data?.members ?? []);
      });
    }
  }
  setMembers(channel, members) {
    this.rooms.set(jsonKey(channel), { channel, members: [...members] });
    this.membersChanged.dispatch({ channel, members: [...members] });
  }
};

// src/services/cursors.ts
var Cursors = class extends RPCService {
  constructor() {
    super(...arguments);
    /** Another connection created a cursor in a joined document. */
    this.cursorAdded = new Signal();
    /** Another connection moved a cursor or changed its status. */
    this.cursorUpdated = new Signal();
    /** Another connection's cursor went away. */
    this.cursorRemoved = new Signal();
    /** The remote cursors of a document changed, for whatever reason; carries the whole list. */
    this.cursorsChanged = new Signal();
    this.documents = /* @__PURE__ */ new Map();
    this.own = /* @__PURE__ */ new Map();
    this.nextHandle = 0;
  }
  /** Joins `document`; resolves with the server's `{cursors}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
  join(params) {
    return this.call("join", params).then((data) => {
      this.replaceCursors(params.document, data?.cursors ?? []);
      return data;
    });
  }
  /** Leaves `document`; the server removes this connection's cursors there. Rejects with `"Not joined"`. */
  leave(params) {
    return afterSettled(this.call("leave", params), () => {
      const key = jsonKey(params.document);
      for (const cursor of this.own.values()) {
        if (jsonKey(cursor.document) === key) this.own.delete(cursor.privateHandle);
      }
      if (this.documents.delete(key)) this.cursorsChanged.dispatch({ document: params.document, cursors: [] });
    });
  }
  /**
   * Creates a cursor in a joined document and resolves with it: an
   * {@link OwnCursor} with its `publicHandle`. `privateHandle` is chosen for
   * you unless given. Rejects with `"Not joined"`, `"Reused handle"`, `"Too many cursors"`.
   */
  createCursor(params) {
    const privateHandle = params.privateHandle ?? this.freeHandle();
    const { document, position, status } = params;
    return this.call("createCursor", { privateHandle, document, position, status }).then((publicHandle) => {
      const cursor = { privateHandle, publicHandle, document, position, status };
      this.own.set(privateHandle, cursor);
      return cursor;
    });
  }
  /** Moves a cursor or changes its status: `newData` has `position` and/or `status`. Rejects with `"No such cursor"`. */
  updateCursor(params) {
    const cursor = this.own.get(params.privateHandle);
    if (cursor) {
      if (params.newData.position !== void 0) cursor.position = params.newData.position;
      if (params.newData.status !== void 0) cursor.status = params.newData.status;
    }
    return this.call("updateCursor", params);
  }
  /** Removes one of this connection's cursors. Rejects with `"No such cursor"`. */
  removeCursor(params) {
    return afterSettled(this.call("removeCursor", params), () => {
      this.own.delete(params.privateHandle);
    });
  }
  /** The other connections' cursors in a joined document, or `[]`. */
  getCursors(document) {
    return [...this.documents.get(jsonKey(document))?.cursors.values() ?? []];
  }
  /** This connection's cursors, in one document or in all. */
  getOwnCursors(document) {
    const all = [...this.own.values()];
    if (document === void 0) return all;
    const key = jsonKey(document);
    return all.filter((cursor) => jsonKey(cursor.document) === key);
  }
  /** The documents this client has joined (and rejoins after a reconnection). */
  get joinedDocuments() {
    return [...this.documents.values()].map((joined) => joined.document);
  }
  onNotification(message) {
    const cursor = message["cursor"];
    if (!cursor || typeof cursor !== "object") return;
    const joined = this.documents.get(jsonKey(cursor.document));
    if (!joined) return;
    switch (message.type) {
      case "cursorAdded":
        joined.cursors.set(cursor.publicHandle, cursor);
        this.cursorAdded.dispatch(cursor);
        break;
      case "cursorUpdated":
        joined.cursors.set(cursor.publicHandle, cursor);
        this.cursorUpdated.dispatch(cursor);
        break;
      case "cursorRemoved":
        joined.cursors.delete(cursor.publicHandle);
        this.cursorRemoved.dispatch(cursor);
        break;
      default:
        return;
    }
    this.cursorsChanged.dispatch({ document: joined.document, cursors: [...joined.cursors.values()] });
  }
  restore() {
    for (const [key, joined] of this.documents) {
      const { document } = joined;
      void this.restoreCall("join", { document }, () => {
        this.documents.delete(key);
        this.cursorsChanged.dispatch({ document, cursors: [] });
      }).then((data) => {
        if (data === void 0) return;
        const cursors = data?.cursors ?? [];
        for (const old of joined.cursors.values()) {
          this.cursorRemoved.dispatch({ publicHandle: old.publicHandle, document: old.document });
        }
        for (const cursor of cursors) this.cursorAdded.dispatch(cursor);
        this.replaceCursors(document, cursors);
      });
      for (const cursor of this.own.values()) {
        if (jsonKey(cursor.document) !== key) continue;
        cursor.publicHandle = null;
        const { privateHandle, position, status } = cursor;
        void this.restoreCall("createCursor", { privateHandle, document, position, status }, () => {
          this.own.delete(privateHandle);
        }).then((publicHandle) => {
          if (publicHandle !== void 0) cursor.publicHandle = publicHandle;
        });
      }
    }
  }
  replaceCursors(document, cursors) {
    this.documents.set(jsonKey(document), {
      document,
      cursors: new Map(cursors.map((cursor) => [cursor.publicHandle, cursor]))
    });
    this.cursorsChanged.dispatch({ document, cursors: [...cursors] });
  }
  freeHandle() {
    while (this.own.has(this.nextHandle)) this.nextHandle++;
    return this.nextHandle++;
  }
};

// src/collections.ts
function isCollection(value) {
  const c = value;
  return !!c && typeof c.insert === "function" && typeof c.update === "function" && typeof c.remove === "function";
}
function own(record, key) {
  return Object.prototype.hasOwnProperty.call(record, key) ? record[key] : void 0;
}
var CollectionDeltaProcessor = class {
  constructor(collections = {}, options = {}) {
    this.collections = collections;
    if (options.itemsAreEqual) this.itemsAreEqual = options.itemsAreEqual;
  }
  /**
   * Whether a collection item is the object a delta describes. By default,
   * items with the same `id`. Override it (subclass, assignment or the
   * `itemsAreEqual` option) for other keys; `item` is what the collection
   * holds (after `transformItem`), `data` is the delta's.
   */
  itemsAreEqual(item, data, _delta) {
    return item != null && data != null && item.id === data.id;
  }
  /**
   * Applies `delta` to the collection registered for its model (and `tag`,
   * which defaults to `delta.tag`). Returns whether a collection took it.
   */
  processDelta(delta, tag = delta.tag) {
    const entry = own(this.collections, delta.model);
    let collection;
    if (isCollection(entry)) {
      collection = entry;
    } else if (entry && tag !== void 0) {
      collection = own(entry, tag);
    }
    if (!collection) return false;
    const equal = (item, data) => this.itemsAreEqual(item, data, delta);
    switch (delta.type) {
      case "insert":
        collection.insert(delta.data, equal);
        return true;
      case "update":
        collection.update(delta.oldData, delta.newData, equal);
        return true;
      case "delete":
        collection.remove(delta.data, equal);
        return true;
      default:
        return false;
    }
  }
};
var ArrayCollection = class {
  constructor(array = [], options = {}) {
    /** Dispatched after each insert, update or removal. */
    this.changed = new Signal();
    this.array = array;
    this.transformItem = options.transformItem ?? ((data) => data);
  }
  insert(data, itemsAreEqual) {
    const item = this.transformItem(data);
    const index = this.array.findIndex((existing) => itemsAreEqual(existing, data));
    if (index >= 0) this.array[index] = item;
    else this.array.push(item);
    this.changed.dispatch();
  }
  update(oldData, newData, itemsAreEqual) {
    const index = this.array.findIndex((existing) => itemsAreEqual(existing, oldData));
    if (index < 0) return;
    this.array[index] = this.transformItem(newData);
    this.changed.dispatch();
  }
  remove(data, itemsAreEqual) {
    const index = this.array.findIndex((existing) => itemsAreEqual(existing, data));
    if (index < 0) return;
    this.array.splice(index, 1);
    this.changed.dispatch();
  }
};
var SingleItemCollection = class {
  constructor(readHandler, updateHandler, removeHandler = () => {
  }) {
    this.readHandler = readHandler;
    this.updateHandler = updateHandler;
    this.removeHandler = removeHandler;
  }
  insert(data) {
    this.updateHandler(data);
  }
  update(oldData, newData, itemsAreEqual) {
    const current = this.readHandler();
    if (current != null && itemsAreEqual(current, oldData)) this.updateHandler(newData);
  }
  remove(data, itemsAreEqual) {
    const current = this.readHandler();
    if (current != null && itemsAreEqual(current, data)) this.removeHandler();
  }
};

// src/services/datasync.ts
var UNAVAILABLE = "Service unavailable";
var RETRY_MIN = 1e3;
var RETRY_MAX = 3e4;
var DataSync = class extends RPCService {
  constructor() {
    super(...arguments);
    /** Whether acquisitions opt in to offsets. Default `true`; `false` for a Snorky 0.1 server. */
    this.offsets = true;
    /** Every delta, in the order the server sent them (of every subscription). */
    this.deltaReceived = new Signal();
    /** Every delta of an opted-in subscription, with its subscription and offset, after it was applied to the subscription's target. */
    this.subscriptionDelta = new Signal();
    /** A subscription was lost: refetch the data and acquire the new token. Carries the old token. */
    this.resyncNeeded = new Signal();
    /** Called with every delta, after `deltaReceived` (Snorky 0.1 style). */
    this.onDelta = null;
    this.held = /* @__PURE__ */ new Map();
    /** The tokens acquired (in acquisition order), which are acquired again after a reconnection. */
    this.tokens = /* @__PURE__ */ new Set();
    /** Acquisitions to try again, by token (the server answered "Service unavailable"). */
    this.retries = /* @__PURE__ */ new Map();
  }
  /**
   * Starts receiving the deltas of a subscription; `target` receives this
   * subscription's deltas (only with offsets: deltas of 0.1's protocol do not
   * say which subscription they belong to). Resolves with the server's data:
   * `{offset}` when opted in, `null` otherwise. Rejects with
   * `"No such subscription"`, `"Offset not retained"`, `"token must be string"`,
   * and with a `TypeError` when `params` is not an object (`{token}`).
   */
  acquireSubscription(params, target) {
    if (typeof params !== "object" || params === null) {
      return Promise.reject(
        new TypeError('acquireSubscription takes {token: "..."}, the subscription token the web application handed out')
      );
    }
    const sent = this.offsets && !("offsets" in params) ? { ...params, offsets: true } : params;
    const token = params.token;
    const previous = this.held.get(token);
    const held = { offsets: sent.offsets === true, offset: null, deltaSinceAcquire: false, target };
    this.held.set(token, held);
    return this.call("acquireSubscription", sent).then(
      (data) => {
        this.acquired(token, held, data);
        this.tokens.add(token);
        return data;
      },
      (error) => {
        if (this.held.get(token) === held) {
          if (previous) this.held.set(token, previous);
          else this.held.delete(token);
        }
        throw error;
      }
    );
  }
  /** Ends a subscription. Rejects with `"No such subscription"`. */
  cancelSubscription(params) {
    return afterSettled(this.call("cancelSubscription", params), () => {
      this.forget(params.token);
    });
  }
  /** The tokens this client holds (and acquires again after a reconnection). */
  get subscriptions() {
    return [...this.tokens];
  }
  /** The offset of the last delta applied for `token` (or of its acquisition), if known. */
  offsetOf(token) {
    return this.held.get(token)?.offset ?? null;
  }
  onNotification(message) {
    if (message.type !== "delta") return;
    const delta = message["delta"];
    const subscription = message["subscription"];
    const offset = message["offset"];
    if (typeof subscription === "string" && typeof offset === "string") {
      const held = this.held.get(subscription);
      if (held) {
        held.offset = offset;
        held.deltaSinceAcquire = true;
        this.apply(held.target, delta, subscription);
      }
    }
    this.deltaReceived.dispatch(delta);
    if (this.onDelta) {
      try {
        this.onDelta(delta);
      } catch (error) {
        console.error("Snorky: onDelta threw", error);
      }
    }
    if (typeof subscription === "string" && typeof offset === "string") {
      this.subscriptionDelta.dispatch({ subscription, delta, offset });
    }
  }
  restore() {
    for (const timer of this.retries.values()) clearTimeout(timer);
    this.retries.clear();
    for (const token of this.tokens) this.resume(token, 0);
  }
  /**
   * Acquires `token` again, after its last offset: as part of the restoration
   * after a reconnection (`attempt` 0), or as a later attempt when the server
   * could not serve the previous one.
   */
  resume(token, attempt) {
    const held = this.held.get(token);
    if (!held) return;
    const params = held.offsets ? { token, offsets: true } : { token };
    if (held.offsets && held.offset !== null) params.after = held.offset;
    held.deltaSinceAcquire = false;
    const refused = (error) => {
      if (this.held.get(token) !== held) return;
      if (error.message === UNAVAILABLE) this.retryLater(token, attempt + 1);
      else this.resync(token);
    };
    const sent = attempt === 0 ? this.restoreCall("acquireSubscription", params, refused) : this.call("acquireSubscription", params).catch((error) => {
      if (error instanceof SnorkyError && error.code === ErrorCode.server) refused(error);
      return void 0;
    });
    void sent.then((data) => {
      if (data !== void 0 && this.held.get(token) === held) this.acquired(token, held, data);
    });
  }
  /** Tries `token` again after a pause that doubles with each attempt (1 s to 30 s). */
  retryLater(token, attempt) {
    const delay = Math.min(RETRY_MIN * 2 ** (attempt - 1), RETRY_MAX);
    clearTimeout(this.retries.get(token));
    this.retries.set(
      token,
      setTimeout(() => {
        this.retries.delete(token);
        if (this.snorky.isConnected) this.resume(token, attempt);
      }, delay)
    );
  }
  connectionLost(code) {
    if (!lostMessages(code)) return;
    for (const token of this.tokens) {
      const held = this.held.get(token);
      if (!held?.offsets || held.offset === null) this.resync(token);
    }
  }
  /** Records what an acquire's reply says, unless a delta already told more. */
  acquired(token, held, data) {
    if (held.deltaSinceAcquire || data === null || typeof data !== "object") return;
    if (typeof data.offset === "string") held.offset = data.offset;
    else console.error(`Snorky: the acquire of ${token} answered no offset`, data);
  }
  apply(target, delta, subscription) {
    if (!target) return;
    try {
      if (typeof target === "function") target(delta, subscription);
      else target.processDelta(delta);
    } catch (error) {
      console.error("Snorky: applying a delta failed", error);
    }
  }
  forget(token) {
    this.tokens.delete(token);
    this.held.delete(token);
    clearTimeout(this.retries.get(token));
    this.retries.delete(token);
  }
  resync(token) {
    this.forget(token);
    this.resyncNeeded.dispatch(token);
  }
};
DataSync.CollectionDeltaProcessor = CollectionDeltaProcessor;
DataSync.ArrayCollection = ArrayCollection;
DataSync.SingleItemCollection = SingleItemCollection;

// src/services/messaging.ts
var Messaging = class extends RPCService {
  constructor() {
    super(...arguments);
    /** A message sent to one of this connection's names. */
    this.participantMessage = new Signal();
    this.names = /* @__PURE__ */ new Set();
  }
  /** Registers `name` for this connection. Rejects with `"Name already registered"`, `"Name not allowed"`. */
  registerParticipant(params) {
    return this.call("registerParticipant", params).then((data) => {
      this.names.add(params.name);
      return data;
    });
  }
  /** Frees `name`. Rejects with `"Unknown participant"`, `"Invalid participant"`. */
  unregisterParticipant(params) {
    return afterSettled(this.call("unregisterParticipant", params), () => {
      this.names.delete(params.name);
    });
  }
  /** Every name registered on the server, sorted. */
  listParticipants(params = {}) {
    return this.call("listParticipants", params);
  }
  /** Sends `body` (any JSON) from one of this connection's names to `dest`. */
  send(params) {
    return this.call("send", params);
  }
  /** The names this connection has registered (and registers again after a reconnection). */
  get participants() {
    return [...this.names];
  }
  onNotification(message) {
    if (message.type === "message") this.participantMessage.dispatch(message);
  }
  restore() {
    for (const name of this.names) {
      void this.restoreCall("registerParticipant", { name }, () => this.names.delete(name));
    }
  }
};

// src/services/pubsub.ts
var PubSub = class extends RPCService {
  constructor() {
    super(...arguments);
    /** A message published to a channel this connection is subscribed to. */
    this.messagePublished = new Signal();
    this.channels = /* @__PURE__ */ new Map();
  }
  /** Subscribes to `channel` (any JSON value). Rejects with `"Already subscribed"`. */
  subscribe(params) {
    return this.call("subscribe", params).then((data) => {
      this.channels.set(jsonKey(params.channel), params.channel);
      return data;
    });
  }
  /** Unsubscribes from `channel`. Rejects with `"Not subscribed"`. */
  unsubscribe(params) {
    return afterSettled(this.call("unsubscribe", params), () => {
      this.channels.delete(jsonKey(params.channel));
    });
  }
  /** Publishes `message` to every subscriber of `channel`. Rejects with `"Not authorized"`. */
  publish(params) {
    return this.call("publish", params);
  }
  /** The channels this client is subscribed to (and restores after a reconnection). */
  get subscriptions() {
    return [...this.channels.values()];
  }
  onNotification(message) {
    if (message.type === "message") this.messagePublished.dispatch(message);
  }
  restore() {
    for (const [key, channel] of this.channels) {
      void this.restoreCall("subscribe", { channel }, () => this.channels.delete(key));
    }
  }
};

// src/client.ts
var State = /* @__PURE__ */ ((State2) => {
  State2["Connecting"] = "connecting";
  State2["Connected"] = "connected";
  State2["Disconnected"] = "disconnected";
  State2["Closed"] = "closed";
  return State2;
})(State || {});
var Snorky = class {
  /**
   * Creates the client and starts connecting.
   *
   * @param socketClass `WebSocket` in browsers, `ws`'s `WebSocket` in Node, or `SockJS`
   *   (sockjs-client) for browsers and networks without WebSocket.
   * @param address the server's endpoint: `"wss://example.com/ws"` for WebSocket,
   *   `"https://example.com/sockjs"` (or a relative `"/sockjs"`) for SockJS.
   * @param services service name -> class: `{pubsub: Snorky.PubSub}`.
   * @param options see {@link SnorkyOptions}; `true` means `{debug: true}` (Snorky 0.1).
   */
  constructor(socketClass, address, services = {}, options = {}) {
    /** Every state change, with `{oldState, newState}`. */
    this.stateChanged = new Signal();
    /** The connection opened (first time or after a reconnection); queued calls have been sent. */
    this.connected = new Signal();
    /** An open connection closed, with its close code and reason. */
    this.disconnected = new Signal();
    /** Every call that restores state after a connection opened has been answered. */
    this.restored = new Signal();
    /** The server refused a call made to restore state after a reconnection. */
    this.restoreFailed = new Signal();
    this.currentState = "connecting" /* Connecting */;
    this.socket = null;
    this.socketOpen = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.nextCallId = 0;
    this.pending = /* @__PURE__ */ new Map();
    this.queue = [];
    this.restoring = null;
    this.generation = 0;
    const o = typeof options === "boolean" ? { debug: options } : options ?? {};
    this.socketClass = socketClass;
    this.sockjs = !/^wss?:/i.test(address);
    this.address = address;
    this.settings = {
      token: o.token,
      reconnect: o.reconnect ?? true,
      minReconnectDelay: o.minReconnectDelay ?? DEFAULT_MIN_DELAY,
      maxReconnectDelay: o.maxReconnectDelay ?? DEFAULT_MAX_DELAY,
      maxReconnectAttempts: o.maxReconnectAttempts ?? Infinity,
      queueTimeout: o.queueTimeout ?? 15e3,
      debug: o.debug ?? false
    };
    const instances = {};
    for (const name of Object.keys(services)) {
      const ServiceClass = services[name];
      instances[name] = new ServiceClass(name, this);
    }
    this.services = instances;
    this.openSocket();
  }
  /** The connection state. */
  get state() {
    return this.currentState;
  }
  /** Whether calls are sent right now (rather than queued). */
  get isConnected() {
    return this.socketOpen;
  }
  /**
   * Starts connecting again after the client gave up (state `Disconnected`).
   * Does nothing while connecting or connected.
   */
  connect() {
    if (this.currentState === "closed" /* Closed */) throw new SnorkyError(ErrorCode.closed, "The Snorky client was closed");
    if (this.currentState !== "disconnected" /* Disconnected */) return;
    this.attempt = 0;
    this.setState("connecting" /* Connecting */);
    this.openSocket();
  }
  /**
   * Ends the client for good: closes the connection, stops reconnecting, and
   * rejects every call not yet answered with code `"closed"`.
   */
  close() {
    if (this.currentState === "closed" /* Closed */) return;
    const socket = this.socket;
    const wasOpen = this.socketOpen;
    this.socket = null;
    this.socketOpen = false;
    this.generation++;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setState("closed" /* Closed */);
    this.failAll(ErrorCode.closed, "The Snorky client was closed");
    if (socket) {
      try {
        socket.close(CloseCode.normal);
      } catch (error) {
        this.log("closing the socket failed", error);
      }
    }
    if (wasOpen) this.disconnected.dispatch({ code: CloseCode.normal, reason: "closed by the client" });
  }
  /** Snorky 0.1's name for {@link close}. */
  disconnect() {
    this.close();
  }
  /**
   * @internal Sends an RPC call, or queues it until the connection opens.
   * `restore` marks the calls services make to restore state after a reconnection.
   */
  _call(service, command, params, restore = false) {
    const promise = new Promise((resolve, reject) => {
      const call = { service, command, params, resolve, reject };
      if (this.socketOpen) {
        this.send(call);
      } else if (this.currentState === "connecting" /* Connecting */) {
        this.enqueue(call);
      } else if (this.currentState === "closed" /* Closed */) {
        reject(new SnorkyError(ErrorCode.closed, "The Snorky client was closed"));
      } else {
        reject(new SnorkyError(ErrorCode.notConnected, "Not connected to the Snorky server, and not reconnecting"));
      }
    });
    if (restore) {
      promise.catch((error) => {
        if (error instanceof SnorkyError && error.code === ErrorCode.server) {
          this.restoreFailed.dispatch({ service, command, params, error });
        }
      });
      this.restoring?.push(promise);
    }
    return promise;
  }
  // -------------------------------------------------------------------------
  // Connection life cycle
  // -------------------------------------------------------------------------
  setState(newState) {
    const oldState = this.currentState;
    if (oldState === newState) return;
    this.currentState = newState;
    this.log("state", oldState, "->", newState);
    this.stateChanged.dispatch({ oldState, newState });
  }
  openSocket() {
    const token = this.settings.token;
    const generation = ++this.generation;
    if (typeof token === "function") {
      Promise.resolve().then(token).then(
        (value) => {
          if (generation === this.generation) this.createSocket(value);
        },
        (error) => {
          if (generation !== this.generation) return;
          this.log("the token provider failed", error);
          this.handleClose(CloseCode.abnormal, "token provider failed");
        }
      );
    } else {
      this.createSocket(token);
    }
  }
  createSocket(token) {
    let socket;
    try {
      socket = new this.socketClass(withToken(this.address, token));
    } catch (error) {
      console.error(
        `Snorky: cannot open a connection to "${this.address}" (${String(error)}): WebSocket takes ws:// or wss:// addresses, SockJS http(s):// or relative ones; not reconnecting`
      );
      this.handleClose(CloseCode.abnormal, String(error), false);
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket === socket) this.handleOpen();
    };
    socket.onmessage = (event) => {
      if (this.socket === socket) this.handleFrame(event.data);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.handleClose(event.code ?? CloseCode.abnormal, event.reason ?? "");
    };
    socket.onerror = (event) => {
      this.log("socket error", event);
    };
  }
  handleOpen() {
    this.socketOpen = true;
    this.attempt = 0;
    const generation = this.generation;
    const restoring = [];
    this.restoring = restoring;
    for (const service of this.serviceList()) {
      try {
        service._restore();
      } catch (error) {
        console.error(`Snorky: restoring service "${service.name}" failed`, error);
      }
    }
    this.restoring = null;
    const queued = this.queue;
    this.queue = [];
    for (const call of queued) {
      if (call.timer !== void 0) clearTimeout(call.timer);
      this.send(call);
    }
    this.setState("connected" /* Connected */);
    this.connected.dispatch();
    Promise.allSettled(restoring).then(() => {
      if (generation === this.generation && this.socketOpen) this.restored.dispatch();
    });
  }
  /** The connection closed or could not open; `retry: false` when trying again cannot help. */
  handleClose(code, reason, retry = true) {
    const wasOpen = this.socketOpen;
    this.socketOpen = false;
    this.generation++;
    this.log("connection closed", code, reason);
    const inFlight = [...this.pending.values()];
    this.pending.clear();
    for (const call of inFlight) {
      call.reject(
        new SnorkyError(ErrorCode.disconnected, `The connection closed before "${call.command}" was answered`)
      );
    }
    for (const service of this.serviceList()) {
      try {
        service._connectionLost(code);
      } catch (error) {
        console.error(`Snorky: service "${service.name}" failed handling the disconnection`, error);
      }
    }
    if (wasOpen) this.disconnected.dispatch({ code, reason });
    if (this.currentState === "closed" /* Closed */) return;
    const s = this.settings;
    if (retry && s.reconnect && shouldReconnect(code, this.sockjs) && this.attempt < s.maxReconnectAttempts) {
      const delay = backoff(this.attempt++, s.minReconnectDelay, s.maxReconnectDelay);
      this.log(`reconnecting in ${delay} ms (attempt ${this.attempt})`);
      this.setState("connecting" /* Connecting */);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        this.openSocket();
      }, delay);
    } else {
      this.setState("disconnected" /* Disconnected */);
      const queued = this.queue;
      this.queue = [];
      for (const call of queued) {
        if (call.timer !== void 0) clearTimeout(call.timer);
        call.reject(new SnorkyError(ErrorCode.notConnected, "Not connected to the Snorky server, and not reconnecting"));
      }
    }
  }
  // -------------------------------------------------------------------------
  // Frames
  // -------------------------------------------------------------------------
  send(call) {
    const callId = this.nextCallId++;
    let frame;
    try {
      frame = JSON.stringify({ service: call.service, message: { command: call.command, params: call.params, callId } });
    } catch (error) {
      call.reject(new SnorkyError(ErrorCode.invalidParams, `Params of "${call.command}" are not JSON: ${String(error)}`));
      return;
    }
    this.pending.set(callId, call);
    try {
      this.socket?.send(frame);
    } catch (error) {
      this.log("send failed", error);
    }
  }
  enqueue(call) {
    this.queue.push(call);
    const timeout = this.settings.queueTimeout;
    if (Number.isFinite(timeout)) {
      call.timer = setTimeout(() => {
        this.queue = this.queue.filter((c) => c !== call);
        call.reject(
          new SnorkyError(ErrorCode.timeout, `Not connected to the Snorky server within ${timeout} ms ("${call.command}")`)
        );
      }, timeout);
    }
  }
  handleFrame(data) {
    let envelope;
    try {
      envelope = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this.log("dropped a frame that is not JSON", data);
      return;
    }
    if (!isObject(envelope) || typeof envelope["service"] !== "string" || !isObject(envelope["message"])) {
      this.log("dropped a frame that is not an envelope", envelope);
      return;
    }
    const serviceName = envelope["service"];
    const message = envelope["message"];
    if (message["type"] === "response" || message["type"] === "error") {
      const callId = message["callId"];
      const call = typeof callId === "number" ? this.pending.get(callId) : void 0;
      if (!call || call.service !== serviceName) {
        this.log("reply to an unknown call", envelope);
        return;
      }
      this.pending.delete(callId);
      if (message["type"] === "response") {
        call.resolve(message["data"] ?? null);
      } else {
        call.reject(new SnorkyError(ErrorCode.server, String(message["message"])));
      }
      return;
    }
    const service = Object.prototype.hasOwnProperty.call(this.services, serviceName) ? this.services[serviceName] : void 0;
    if (!service || typeof message["type"] !== "string") {
      this.log("dropped a message for an unknown service or without a type", envelope);
      return;
    }
    service._handleMessage(message);
  }
  failAll(code, text) {
    const calls = [...this.pending.values(), ...this.queue];
    this.pending.clear();
    this.queue = [];
    for (const call of calls) {
      if (call.timer !== void 0) clearTimeout(call.timer);
      call.reject(new SnorkyError(code, text));
    }
  }
  serviceList() {
    return Object.values(this.services);
  }
  log(...args) {
    if (this.settings.debug) console.debug("Snorky:", ...args);
  }
};
Snorky.PubSub = PubSub;
Snorky.Chat = Chat;
Snorky.Cursors = Cursors;
Snorky.Messaging = Messaging;
Snorky.DataSync = DataSync;
Snorky.RPCService = RPCService;
Snorky.Signal = Signal;
Snorky.State = State;
Snorky.SnorkyError = SnorkyError;
Snorky.CloseCode = CloseCode;
Snorky.fetchWithSubscription = fetchWithSubscription;
function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}
function withToken(address, token) {
  if (!token) return address;
  return `${address}${address.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

// src/index.ts
var src_default = Snorky;
export {
  ArrayCollection,
  Chat,
  CloseCode,
  CollectionDeltaProcessor,
  Cursors,
  DataSync,
  ErrorCode,
  Messaging,
  PubSub,
  RPCService,
  Signal,
  SingleItemCollection,
  Snorky,
  SnorkyError,
  State,
  backoff,
  src_default as default,
  fetchWithSubscription,
  lostMessages,
  shouldReconnect
};
//# sourceMappingURL=snorky.mjs.map
