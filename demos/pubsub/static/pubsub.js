// Snorky 0.1's README example, with the shipped client instead of jQuery and snorky.bundle.js: the
// constructor and the PubSub calls are the same. SNORKY_URL comes from /config.js.
var snorky = new Snorky(WebSocket, SNORKY_URL, {
  "pubsub": Snorky.PubSub
});
var pubsub = snorky.services.pubsub;

pubsub.subscribe({channel: "messages"})
.then(function() {
  // Confirmation received! (optional)
  showState(snorky.state);
});

pubsub.messagePublished.add(function(messageObject) {
  var item = document.createElement("li");
  item.textContent = messageObject.message;
  document.getElementById("messages").append(item);
});

document.querySelector("form").addEventListener("submit", function(event) {
  event.preventDefault(); // don't reload the page

  var input = document.getElementById("message");
  if (!input.value) return;
  pubsub.publish({
    channel: "messages",
    message: input.value
  });
  input.value = "";
});

// New since 0.1: the client reports its state, and reconnects by itself (resubscribing).
function showState(state) {
  var status = document.getElementById("status");
  var live = state === "connected" && pubsub.subscriptions.length > 0;
  status.className = live ? "live" : "";
  status.textContent = live ? "connected: what you send appears in every open page" : state + "…";
}
snorky.stateChanged.add(function(change) { showState(change.newState); });
