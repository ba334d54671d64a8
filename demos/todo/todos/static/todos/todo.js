// The todo demo's page: two lists kept live by Snorky, in plain JavaScript with no build step.
//
// One subscription covers both lists. GET /api/todos/ answers the user's own todos and the shared
// ones, and (asked by fetchWithSubscription) a token for a subscription to exactly that set. Deltas
// then keep one array current: the server turns a todo that leaves the set (unshared, given away)
// into a delete, and one that enters it into an insert. The page splits the array in two lists.
//
// When the subscription is lost (the Snorky server restarted), resyncNeeded fires once the client
// has reconnected and the page fetches the data and a new token again: nothing changed meanwhile
// is missed, and the page is not reloaded.

const Snorky = window.Snorky;
const config = JSON.parse(document.getElementById("snorky-config").textContent);
const page = JSON.parse(document.getElementById("todo-page").textContent);
const me = page.me;
const usernames = new Map(page.users.map((user) => [user.id, user.username]));

// --- Live data --------------------------------------------------------------------------------

// Browsers (or networks) without WebSocket use SockJS, served by the same Snorky server under
// /sockjs; the page loads sockjs-client only then (see the template).
const [socketClass, url] = window.WebSocket
  ? [WebSocket, config.url]
  : [window.SockJS, config.url.replace(/^ws(s?):/, "http$1:").replace(/\/ws$/, "/sockjs")];
let pageToken = config.token;
const snorky = new Snorky(socketClass, url, { datasync: Snorky.DataSync }, {
  // The connection token rendered in the page, then a fresh one for each reconnection: tokens live
  // two minutes (CONNECTION_TOKEN_TTL), the page for days.
  token: async () => {
    if (pageToken) {
      const token = pageToken;
      pageToken = null;
      return token;
    }
    const response = await fetch(config.tokenUrl, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`connection token: HTTP ${response.status}`);
    return (await response.json()).token;
  },
  maxReconnectDelay: 5000,
});
const datasync = snorky.services.datasync;

const todos = new Snorky.DataSync.ArrayCollection([]);
const processor = new Snorky.DataSync.CollectionDeltaProcessor({ Todo: todos });
datasync.onDelta = (delta) => processor.processDelta(delta);
todos.changed.add(render);

let subscription = null; // the token of the subscription the data follows
let loading = null; // the load in progress
let loadAgain = false; // another load was asked for meanwhile
let retryTimer = null;

datasync.resyncNeeded.add((lost) => {
  if (lost !== subscription) return;
  subscription = null;
  reload();
});
snorky.stateChanged.add(showStatus);
// Signed out (in another tab, say): the server closed this connection for good (4501). The page
// goes back to the login form, which is where Django sends it now anyway.
snorky.disconnected.add(({ code }) => {
  if (code === 4501) location.assign(`/accounts/login/?next=${location.pathname}`);
});

/** Loads the todos with a new subscription; one load at a time, retried until it succeeds. */
function reload() {
  if (loading) {
    loadAgain = true;
    return;
  }
  clearTimeout(retryTimer);
  loading = load()
    .catch((error) => {
      console.warn("todos: loading failed, retrying", error);
      retryTimer = setTimeout(reload, 2000);
    })
    .finally(() => {
      loading = null;
      showStatus();
      if (loadAgain) {
        loadAgain = false;
        reload();
      }
    });
  showStatus();
}

async function load() {
  const previous = subscription;
  subscription = null;
  if (previous && datasync.subscriptions.includes(previous)) {
    datasync.cancelSubscription({ token: previous }).catch(() => {});
  }
  let result;
  try {
    result = await Snorky.fetchWithSubscription("/api/todos/", { credentials: "same-origin" });
  } catch (error) {
    const status = error?.response?.status;
    // Signed out (in another tab, or the session expired): back to the login page.
    if (status === 401 || status === 403) location.assign(`/accounts/login/?next=${location.pathname}`);
    // 503: Django could not reach the Snorky server. Show the data anyway, then try again.
    if (status === 503) replaceAll(await api("GET", "/api/todos/"));
    throw error;
  }
  // The subscription was authorized before the data was read: every change after this data
  // reaches us once the token is acquired (the server buffers them until then).
  replaceAll(result.data);
  await datasync.acquireSubscription({ token: result.subscriptionToken });
  subscription = result.subscriptionToken;
}

function replaceAll(data) {
  todos.array.splice(0, todos.array.length, ...data);
  render();
}

// --- Writes ------------------------------------------------------------------------------------
//
// While the page is live, the delta of a write updates it, in order with everyone else's changes.
// While it is not (the Snorky server is away), the page applies the API's answer itself; the full
// reload that follows the reconnection then brings in what the others changed meanwhile.

const sameTodo = (item, data) => item.id === data.id;
const visible = (todo) => todo.shared || todo.owner === me;

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": page.csrfToken },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {}
    throw new Error(detail);
  }
  return response.status === 204 ? null : response.json();
}

const isLive = () => snorky.isConnected && subscription !== null && !loading;

function applyLocally(todo) {
  if (isLive()) return;
  if (visible(todo)) todos.insert(todo, sameTodo);
  else todos.remove(todo, sameTodo);
}

function removeLocally(todo) {
  if (!isLive()) todos.remove(todo, sameTodo);
}

/** Shows the outcome of a write; `undo` puts back what the page showed ahead of a failed one. */
function write(promise, undo) {
  promise
    .then(() => showError(null))
    .catch((error) => {
      undo?.();
      showError(error.message);
    });
}

const createTodo = (title, shared) => write(api("POST", "/api/todos/", { title, shared }).then(applyLocally));
const updateTodo = (todo, changes, undo) =>
  write(api("PATCH", `/api/todos/${todo.id}/`, changes).then(applyLocally), undo);
const deleteTodo = (todo) =>
  write(api("DELETE", `/api/todos/${todo.id}/`).then(() => removeLocally(todo)));
const clearCompleted = (list) =>
  write(
    api("POST", "/api/todos/clear-completed/", { list }).then(() => {
      for (const todo of todos.array.filter((t) => t.done && listOf(t) === list)) removeLocally(todo);
    }),
  );

// --- Rendering --------------------------------------------------------------------------------

const lists = {
  mine: { section: document.getElementById("mine"), rows: new Map() },
  team: { section: document.getElementById("team"), rows: new Map() },
};
const listOf = (todo) => (todo.shared ? "team" : "mine");

function render() {
  const shown = todos.array.filter(visible).sort((a, b) => a.id - b.id);
  for (const [name, list] of Object.entries(lists)) {
    renderList(name, list, shown.filter((todo) => listOf(todo) === name));
  }
}

// Rows are kept by id and updated in place, so a delta for one todo never disturbs another
// (nor the one being edited). A row is written only when its todo changed (a delta replaces the
// object): rewriting the others would undo a checkbox the user just ticked, whose write is still
// on its way to the server.
function renderList(name, list, items) {
  const ul = list.section.querySelector(".items");
  const wanted = new Set(items.map((todo) => todo.id));
  for (const [id, row] of list.rows) {
    if (!wanted.has(id)) {
      row.remove();
      list.rows.delete(id);
    }
  }
  items.forEach((todo, index) => {
    let row = list.rows.get(todo.id);
    if (!row) {
      row = createRow(name);
      list.rows.set(todo.id, row);
    }
    if (row.todo !== todo) updateRow(row, todo);
    if (ul.children[index] !== row) ul.insertBefore(row, ul.children[index] ?? null);
  });
  const left = items.filter((todo) => !todo.done).length;
  list.section.querySelector(".count").textContent = `${left} ${left === 1 ? "item" : "items"} left`;
  list.section.querySelector(".clear").hidden = !items.some((todo) => todo.done);
}

function createRow(listName) {
  const row = document.createElement("li");
  row.innerHTML = `
    <input type="checkbox" class="toggle" aria-label="Done">
    <label class="title"></label>
    <span class="owner"></span>
    <select class="give" aria-label="Give to"></select>
    <button type="button" class="share"></button>
    <button type="button" class="destroy" aria-label="Delete" title="Delete">×</button>`;
  // A failed write shows the row's todo as it is again (the checkbox, the "Give to" choice).
  const showAsItIs = () => updateRow(row, row.todo);
  row.querySelector(".toggle").addEventListener("change", (event) =>
    updateTodo(row.todo, { done: event.target.checked }, showAsItIs),
  );
  row.querySelector(".title").addEventListener("dblclick", () => startEditing(row));
  row.querySelector(".destroy").addEventListener("click", () => deleteTodo(row.todo));
  row.querySelector(".share").addEventListener("click", () => updateTodo(row.todo, { shared: !row.todo.shared }));
  const give = row.querySelector(".give");
  give.add(new Option("Give to…", ""));
  for (const user of page.users) if (user.id !== me) give.add(new Option(user.username, String(user.id)));
  give.addEventListener("change", () => {
    if (give.value) updateTodo(row.todo, { owner: Number(give.value) }, showAsItIs);
  });
  if (listName === "team") give.remove();
  return row;
}

function updateRow(row, todo) {
  row.todo = todo;
  row.dataset.id = String(todo.id);
  row.classList.toggle("done", todo.done);
  row.querySelector(".toggle").checked = todo.done;
  row.querySelector(".title").textContent = todo.title;
  const owner = row.querySelector(".owner");
  owner.textContent = todo.shared && todo.owner !== me ? (usernames.get(todo.owner) ?? todo.owner_name) : "";
  owner.hidden = !owner.textContent;
  const share = row.querySelector(".share");
  share.hidden = todo.owner !== me; // only the owner shares, unshares or gives away
  share.textContent = todo.shared ? "Unshare" : "Share";
  share.title = todo.shared ? "Back to my todos (only you)" : "Move to the team list";
  const give = row.querySelector(".give");
  if (give) give.value = "";
}

function startEditing(row) {
  if (row.classList.contains("editing")) return;
  const todo = row.todo;
  const input = document.createElement("input");
  input.className = "edit";
  input.value = todo.title;
  input.setAttribute("aria-label", "Edit todo");
  row.classList.add("editing");
  row.append(input);
  input.focus();
  input.select();
  let finished = false;
  const finish = (save) => {
    if (finished) return;
    finished = true;
    row.classList.remove("editing");
    input.remove();
    const title = input.value.trim();
    if (!save || title === row.todo.title) return;
    if (title) updateTodo(row.todo, { title });
    else deleteTodo(row.todo);
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

for (const [name, list] of Object.entries(lists)) {
  const form = list.section.querySelector("form.new");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = form.querySelector(".new-todo");
    const title = input.value.trim();
    if (title) createTodo(title, name === "team");
    input.value = "";
  });
  list.section.querySelector(".clear").addEventListener("click", () => clearCompleted(name));
}

// --- Status -----------------------------------------------------------------------------------

const statusElement = document.getElementById("status");
const errorElement = document.createElement("p");
errorElement.className = "error";
errorElement.hidden = true;
document.querySelector("main").before(errorElement);

let everConnected = false;

function showStatus() {
  let state;
  if (snorky.isConnected) {
    everConnected = true;
    state = isLive() ? "live" : "syncing";
  } else {
    state = everConnected ? "reconnecting" : "connecting";
  }
  statusElement.dataset.state = state;
  statusElement.textContent = { live: "live", syncing: "syncing…", reconnecting: "reconnecting…", connecting: "connecting…" }[state];
}

function showError(message) {
  errorElement.hidden = !message;
  errorElement.textContent = message ? `Could not save: ${message}` : "";
}

reload();
