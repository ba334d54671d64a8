// The chat demo's page, with the client snorky_django ships (snorky.min.js, window.Snorky):
// - Snorky.Chat: every room is joined at start; members and presence, messages, and read receipts
//   across one user's tabs (reading a room in one tab marks it read in the others);
// - Snorky.Cursors: each room's shared notes are a document; every participant's caret is drawn
//   over the text area;
// - Snorky.PubSub: the notes' text. Django saves each version and publishes it to the room's
//   channel ({"notes": <room>}); the last writer wins.
"use strict";

const config = JSON.parse(document.getElementById("snorky-config").textContent);
const demo = JSON.parse(document.getElementById("demo-data").textContent);
const me = demo.me;
// Tells this page's own notes versions apart when they come back through PubSub.
const pageId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

// The token rendered in the page serves the first connection; a reconnection (maybe after it
// expired) asks Django for a fresh one.
let pageToken = config.token;
async function connectionToken() {
  if (pageToken) {
    const token = pageToken;
    pageToken = null;
    return token;
  }
  const response = await fetch(config.tokenUrl, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`no connection token: HTTP ${response.status}`);
  return (await response.json()).token;
}

// Browsers (or networks) without WebSocket use SockJS, served by the same Snorky server under
// /sockjs; the page loads sockjs-client only then (see the template).
const [socketClass, url] = window.WebSocket
  ? [WebSocket, config.url]
  : [window.SockJS, config.url.replace(/^ws(s?):/, "http$1:").replace(/\/ws$/, "/sockjs")];
const snorky = new Snorky(
  socketClass,
  url,
  { chat: Snorky.Chat, cursors: Snorky.Cursors, pubsub: Snorky.PubSub },
  { token: connectionToken },
);
const { chat, cursors, pubsub } = snorky.services;

const $ = (selector) => document.querySelector(selector);
const statusLine = $("#status");
const roomButtons = new Map([...document.querySelectorAll("#rooms button")].map((b) => [b.dataset.room, b]));
const membersList = $("#members");
const log = $("#log");
const leaveButton = $("#leave");
const compose = $("#compose");
const messageInput = $("#message");
const textarea = $("#notes-text");
const overlay = $("#cursors");
const editors = $("#editors");

/** Per room: the chat log of this page and the notes' latest version. */
const rooms = new Map(
  demo.rooms.map((room) => [
    room.slug,
    {
      slug: room.slug,
      title: room.title,
      joined: false,
      log: [], // {kind: "message"|"presence"|"note", from, body, status, timestamp, read}
      notes: room.notes,
      version: room.version,
      saving: false, // a save is in flight
      dirty: false, // edited since the last save was sent
      pending: null, // someone else's version that arrived while this page was saving
    },
  ]),
);
let active = rooms.has(location.hash.slice(1)) ? location.hash.slice(1) : demo.rooms[0].slug;

// ---------------------------------------------------------------------------------------------
// People

function person(identity) {
  return demo.users[identity]?.name ?? `user ${identity}`;
}

// Demo users' identities are their primary keys: consecutive numbers get distinct colours.
const palette = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#bf3989", "#0a7e8c", "#4d2d00"];
function color(identity) {
  let index = Number.parseInt(identity, 10);
  if (!Number.isSafeInteger(index)) {
    index = 0;
    for (const char of String(identity)) index = (index * 31 + char.codePointAt(0)) % 65521;
  }
  return palette[index % palette.length];
}

function nameTag(identity) {
  const tag = document.createElement("span");
  tag.className = "who";
  tag.style.setProperty("--color", color(identity));
  tag.textContent = identity === me ? `${person(identity)} (you)` : person(identity);
  return tag;
}

// ---------------------------------------------------------------------------------------------
// Connection

const stateText = {
  connecting: "connecting…",
  connected: "online",
  disconnected: "offline (reload to retry)",
  closed: "closed",
};
let everConnected = false;
function showState() {
  everConnected ||= snorky.state === "connected";
  statusLine.dataset.state = snorky.state;
  statusLine.textContent =
    everConnected && snorky.state === "connecting" ? "reconnecting…" : (stateText[snorky.state] ?? snorky.state);
}
snorky.stateChanged.add(showState);
showState();
// Signed out (in another tab, say): the server closed this connection for good (4501).
snorky.disconnected.add(({ code }) => {
  if (code === 4501) location.reload(); // Django answers with the login form now
});

snorky.connected.addOnce(async () => {
  try {
    await Promise.all(
      [...rooms.values()].map((room) =>
        Promise.all([
          chat.join({ channel: room.slug }).then(() => {
            room.joined = true;
          }),
          cursors.join({ document: notesDocument(room.slug) }),
          pubsub.subscribe({ channel: notesDocument(room.slug) }).then(() => refreshNotes(room)),
        ]),
      ),
    );
    await placeOwnCursor();
    document.body.dataset.ready = "true"; // the browser tests wait for this
  } catch (error) {
    console.error("could not join the rooms", error);
    statusLine.textContent = `error: ${error.message}`;
  }
  render();
});

// What was missed while disconnected: chat messages are gone, the notes can be fetched again.
snorky.restored.add(() => {
  for (const room of rooms.values()) refreshNotes(room);
});
snorky.restoreFailed.add((failure) => console.warn("not restored after reconnecting", failure));

// ---------------------------------------------------------------------------------------------
// Chat: messages, presence, read receipts

function pageVisible() {
  return document.visibilityState === "visible";
}

chat.messageReceived.add((message) => {
  const room = rooms.get(message.channel);
  if (!room) return;
  // One's own messages are read; so is a message that arrives in the room on screen.
  room.log.push({ kind: "message", ...message, read: message.from === me });
  if (room.slug === active && pageVisible()) markRead(room);
  render();
});

chat.presenceReceived.add((presence) => {
  const room = rooms.get(presence.channel);
  if (!room) return;
  room.log.push({ kind: "presence", ...presence, read: true });
  render();
});

// Another tab of this user read the room: what it had received by then is read here too.
chat.readReceived.add((receipt) => {
  const room = rooms.get(receipt.channel);
  if (!room) return;
  const readUntil = Date.parse(receipt.timestamp);
  for (const entry of room.log) {
    if (Date.parse(entry.timestamp) <= readUntil) entry.read = true;
  }
  render();
});

chat.membersChanged.add(() => render());

/** Marks the room read here, and tells this user's other tabs. */
function markRead(room) {
  const unread = room.log.filter((entry) => !entry.read);
  if (unread.length === 0) return;
  for (const entry of unread) entry.read = true;
  if (room.joined) chat.read({ channel: room.slug }).catch((error) => console.warn("read", error));
}

document.addEventListener("visibilitychange", () => {
  if (pageVisible()) {
    markRead(rooms.get(active));
    render();
  }
});

compose.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = rooms.get(active);
  const body = messageInput.value.trim();
  if (!body || !room.joined) return;
  messageInput.value = "";
  markRead(room); // answering means having read
  chat.send({ channel: room.slug, body }).catch((error) => {
    messageInput.value ||= body;
    room.log.push({ kind: "note", body: `Not sent: ${error.message}`, timestamp: new Date().toISOString(), read: true });
    render();
  });
});

leaveButton.addEventListener("click", async () => {
  const room = rooms.get(active);
  leaveButton.disabled = true;
  try {
    if (room.joined) {
      await chat.leave({ channel: room.slug });
      room.joined = false;
      room.log.push({ kind: "note", body: "You left the room.", timestamp: new Date().toISOString(), read: true });
    } else {
      await chat.join({ channel: room.slug });
      room.joined = true;
      room.log.push({ kind: "note", body: "You joined the room.", timestamp: new Date().toISOString(), read: true });
    }
  } catch (error) {
    room.log.push({ kind: "note", body: `Error: ${error.message}`, timestamp: new Date().toISOString(), read: true });
  } finally {
    leaveButton.disabled = false;
  }
  render();
});

for (const [slug, button] of roomButtons) {
  button.addEventListener("click", () => switchRoom(slug));
}

function switchRoom(slug) {
  if (slug === active) return;
  removeOwnCursor();
  active = slug;
  history.replaceState(null, "", `#${slug}`);
  const room = rooms.get(slug);
  markRead(room);
  textarea.value = room.notes;
  textarea.setSelectionRange(0, 0);
  if (document.body.dataset.ready) placeOwnCursor();
  render();
}

// ---------------------------------------------------------------------------------------------
// Rendering

function timeOf(timestamp) {
  return new Date(timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function render() {
  const room = rooms.get(active);
  for (const [slug, button] of roomButtons) {
    const unread = rooms.get(slug).log.filter((entry) => !entry.read).length;
    const badge = button.querySelector(".badge");
    button.classList.toggle("active", slug === active);
    button.dataset.unread = unread;
    badge.hidden = unread === 0;
    badge.textContent = unread;
  }
  $("#room-title").textContent = `# ${room.title}`;
  leaveButton.textContent = room.joined ? "Leave" : "Join";
  leaveButton.hidden = !document.body.dataset.ready;
  messageInput.disabled = !room.joined;
  messageInput.placeholder = room.joined ? `Message # ${room.title}` : "Join the room to write";

  const members = room.joined ? chat.getMembers(room.slug) : [];
  members.sort((a, b) => (a === me ? -1 : b === me ? 1 : person(a).localeCompare(person(b))));
  membersList.replaceChildren(
    ...members.map((identity) => {
      const item = document.createElement("li");
      item.dataset.user = identity;
      item.append(nameTag(identity));
      return item;
    }),
  );
  if (!room.joined) membersList.innerHTML = '<li class="hint">Join the room to see who is here.</li>';

  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.replaceChildren(...room.log.map(renderEntry));
  if (room.log.length === 0) log.innerHTML = '<li class="hint">No messages yet: say hello.</li>';
  if (atBottom) log.scrollTop = log.scrollHeight;

  if (textarea.value !== room.notes) textarea.value = room.notes;
  drawCursors();
}

function renderEntry(entry) {
  const item = document.createElement("li");
  item.className = entry.kind;
  const time = document.createElement("time");
  time.dateTime = entry.timestamp;
  time.textContent = timeOf(entry.timestamp);
  if (entry.kind === "message") {
    item.classList.toggle("unread", !entry.read);
    item.dataset.from = entry.from;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = typeof entry.body === "string" ? entry.body : JSON.stringify(entry.body);
    item.append(nameTag(entry.from), time, body);
  } else if (entry.kind === "presence") {
    item.dataset.from = entry.from;
    item.append(nameTag(entry.from), ` ${entry.status === "joined" ? "joined" : "left"} `, time);
  } else {
    item.append(entry.body, " ", time);
  }
  return item;
}

// ---------------------------------------------------------------------------------------------
// Shared notes: the text (PubSub + Django) ...

function notesDocument(slug) {
  return { notes: slug }; // the Cursors document and the PubSub channel of a room's notes
}

function notesUrl(room) {
  return demo.notesUrl.replace("ROOM", encodeURIComponent(room.slug));
}

pubsub.messagePublished.add(({ channel, message }) => {
  const room = rooms.get(channel?.notes);
  if (room && message) receiveVersion(room, message);
});

/** The notes as Django has them: once subscribed, and after a reconnection (versions missed). */
async function refreshNotes(room) {
  try {
    const response = await fetch(notesUrl(room), { credentials: "same-origin", cache: "no-store" });
    if (response.ok) receiveVersion(room, await response.json());
  } catch (error) {
    console.warn("could not fetch the notes", error);
  }
}

function receiveVersion(room, version) {
  if (version.version <= room.version) return; // older than what is shown, or the same
  if (version.client === pageId) {
    room.version = version.version; // this page's own save: already on screen
    return;
  }
  if (room.saving || room.dirty) {
    // This page's save in flight decides; a later version than it still wins afterwards.
    if (!room.pending || version.version > room.pending.version) room.pending = version;
    return;
  }
  applyVersion(room, version);
}

function applyVersion(room, version) {
  const before = room.notes;
  room.notes = version.text;
  room.version = version.version;
  if (room.slug !== active) return;
  // Keep the caret in the same place of the text around it.
  const edit = difference(before, version.text);
  const shift = (position) => {
    if (position <= edit.start) return position;
    if (position >= edit.start + edit.removed) return position + edit.inserted - edit.removed;
    return edit.start + edit.inserted;
  };
  const [start, end, direction] = [textarea.selectionStart, textarea.selectionEnd, textarea.selectionDirection];
  textarea.value = version.text;
  textarea.setSelectionRange(shift(start), shift(end), direction);
  moveOwnCursor();
  drawCursors();
}

/** The one edit turning `before` into `after`: where, how many characters removed and inserted. */
function difference(before, after) {
  let start = 0;
  const shortest = Math.min(before.length, after.length);
  while (start < shortest && before[start] === after[start]) start++;
  let end = 0;
  while (end < shortest - start && before[before.length - 1 - end] === after[after.length - 1 - end]) end++;
  return { start, removed: before.length - start - end, inserted: after.length - start - end };
}

textarea.addEventListener("input", () => {
  const room = rooms.get(active);
  room.notes = textarea.value;
  room.dirty = true;
  saveNotes(room);
  moveOwnCursor();
  drawCursors();
});

/** Sends the room's notes to Django, one request at a time, until what was sent is what is typed. */
async function saveNotes(room) {
  if (room.saving) return; // the loop below sends the latest text when the request in flight ends
  room.saving = true;
  try {
    while (room.dirty) {
      room.dirty = false;
      const response = await fetch(notesUrl(room), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": demo.csrfToken },
        body: JSON.stringify({ text: room.notes, client: pageId }),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const saved = await response.json();
      room.version = Math.max(room.version, saved.version);
    }
    if (editors.classList.contains("error")) {
      editors.classList.remove("error");
      drawCursors();
    }
  } catch (error) {
    room.dirty = true;
    editors.classList.add("error");
    editors.textContent = `Not saved (${error.message}); retrying…`;
    setTimeout(() => saveNotes(room), 2000);
  } finally {
    room.saving = false;
  }
  const pending = room.pending;
  room.pending = null;
  if (pending && pending.version > room.version && !room.dirty && !room.saving) applyVersion(room, pending);
}

// ---------------------------------------------------------------------------------------------
// ... and the cursors (Cursors)

let ownCursor = null; // {slug, created: Promise<OwnCursor>}
let lastSent = null;
let cursorBusy = false;

function caret() {
  return textarea.selectionDirection === "backward" ? textarea.selectionStart : textarea.selectionEnd;
}

function cursorState() {
  return { position: caret(), status: { focused: document.activeElement === textarea } };
}

function placeOwnCursor() {
  const { position, status } = cursorState();
  const created = cursors.createCursor({ document: notesDocument(active), position, status });
  ownCursor = { slug: active, created };
  lastSent = JSON.stringify({ position, status });
  created.catch((error) => console.warn("could not create the cursor", error));
  return created;
}

function removeOwnCursor() {
  if (!ownCursor) return;
  const { created } = ownCursor;
  ownCursor = null;
  created.then((cursor) => cursors.removeCursor({ privateHandle: cursor.privateHandle })).catch(() => {});
}

/** Sends the caret's position, one update at a time, skipping the ones overtaken meanwhile. */
async function moveOwnCursor() {
  if (cursorBusy || !ownCursor) return;
  cursorBusy = true;
  try {
    for (;;) {
      const current = ownCursor;
      const newData = cursorState();
      const serialized = JSON.stringify(newData);
      if (!current || serialized === lastSent) break;
      const cursor = await current.created;
      if (ownCursor !== current) continue;
      lastSent = serialized;
      await cursors.updateCursor({ privateHandle: cursor.privateHandle, newData });
    }
  } catch (error) {
    console.warn("could not move the cursor", error);
    lastSent = null;
  } finally {
    cursorBusy = false;
  }
}

for (const type of ["keyup", "mouseup", "select", "focus", "blur"]) {
  textarea.addEventListener(type, moveOwnCursor);
}
document.addEventListener("selectionchange", () => {
  if (document.activeElement === textarea) moveOwnCursor();
});

cursors.cursorsChanged.add(() => drawCursors());
textarea.addEventListener("scroll", () => drawCursors());
window.addEventListener("resize", () => drawCursors());

// Where a caret at `position` is drawn, found with an invisible copy of the text area.
const mirror = document.createElement("div");
mirror.className = "mirror";
mirror.setAttribute("aria-hidden", "true");
textarea.after(mirror);
const copiedStyles = [
  "boxSizing", "width", "borderTopWidth", "borderRightWidth", "borderBottomWidth", "borderLeftWidth",
  "borderStyle", "paddingTop", "paddingRight", "paddingBottom", "paddingLeft", "fontStyle", "fontVariant",
  "fontWeight", "fontStretch", "fontSize", "lineHeight", "fontFamily", "textAlign", "textTransform",
  "textIndent", "letterSpacing", "wordSpacing", "tabSize",
];

function caretCoordinates(position) {
  const style = getComputedStyle(textarea);
  for (const property of copiedStyles) mirror.style[property] = style[property];
  // The text wraps where the text area's does, its scroll bar included.
  mirror.style.overflowY = textarea.scrollHeight > textarea.clientHeight ? "scroll" : "hidden";
  mirror.textContent = textarea.value.slice(0, position);
  const marker = document.createElement("span");
  marker.textContent = textarea.value.slice(position) || ".";
  mirror.append(marker);
  const lineHeight = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.4;
  return {
    top: marker.offsetTop + parseFloat(style.borderTopWidth) - textarea.scrollTop,
    left: marker.offsetLeft + parseFloat(style.borderLeftWidth) - textarea.scrollLeft,
    height: lineHeight,
  };
}

function drawCursors() {
  const remote = cursors.getCursors(notesDocument(active));
  const length = textarea.value.length;
  overlay.replaceChildren(
    ...remote.map((cursor) => {
      const position = Math.min(Math.max(Number(cursor.position) || 0, 0), length);
      const { top, left, height } = caretCoordinates(position);
      const caretElement = document.createElement("div");
      caretElement.className = cursor.status?.focused ? "remote-cursor" : "remote-cursor idle";
      caretElement.dataset.user = cursor.owner;
      caretElement.dataset.position = position;
      caretElement.style.cssText = `left: ${left}px; top: ${top}px; height: ${height}px`;
      caretElement.style.setProperty("--color", color(cursor.owner));
      caretElement.classList.toggle("below", top < 18); // no room for the name above the first line
      caretElement.hidden = top < 0 || top + height > textarea.clientHeight + 2;
      const label = document.createElement("span");
      label.textContent = person(cursor.owner);
      caretElement.append(label);
      return caretElement;
    }),
  );
  if (editors.classList.contains("error")) return;
  const owners = [...new Set(remote.map((cursor) => cursor.owner))];
  editors.replaceChildren(
    ...(owners.length
      ? ["Also here: ", ...owners.flatMap((owner, index) => (index ? [", ", nameTag(owner)] : [nameTag(owner)]))]
      : ["Nobody else is in these notes yet."]),
  );
}

textarea.value = rooms.get(active).notes;
textarea.setSelectionRange(0, 0); // setting the value put the caret at the end
render();
