// Polls the mailbox's progress while its sync runs, and shows the figures as they change.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var url = box.getAttribute("data-progress-url");
  var fields = { messages: "messages", linked: "linked", waiting: "waiting" };

  function show(data) {
    var state = document.getElementById("state");
    state.textContent = data.state_label;
    state.className = "state state-" + data.state;
    Object.keys(fields).forEach(function (key) {
      document.getElementById(fields[key]).textContent = String(data[key]);
    });
    document.getElementById("last-sync").textContent = data.last_sync_at
      ? data.last_sync_at.replace("T", " ").slice(0, 16) + " UTC" : "—";
    document.getElementById("error").textContent = data.error || "";
    box.setAttribute("data-done", data.done ? "yes" : "no");
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        show(data);
        if (!data.done) { window.setTimeout(poll, 1000); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }

  poll();
})();
