// The editor's workbench: each change (drag, arrow buttons, section, top story, image,
// title and lead, drop, undo) is sent at once as JSON with the version the page was
// built from; the previews reload on their own, the page does not. A change refused
// because another editor saved first says who, and nothing is lost silently.
(function () {
  "use strict";
  var bench = document.getElementById("workbench");
  if (!bench) { return; }
  var version = Number(bench.getAttribute("data-version"));
  var csrf = bench.getAttribute("data-csrf");
  var list = bench.getAttribute("data-list");
  var status = document.getElementById("workbench-status");
  var stale = document.getElementById("stale");

  function reloadPreviews() {
    document.querySelectorAll("iframe.desktop, iframe.phone").forEach(function (frame) {
      var url = new URL(frame.getAttribute("src"), window.location.href);
      url.searchParams.set("v", String(version));
      frame.setAttribute("src", url.pathname + url.search);
    });
  }

  function send(change) {
    change.version = version;
    return fetch("/editor/lists/" + encodeURIComponent(list) + "/change", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(change)
    }).then(function (response) {
      return response.json().catch(function () { return {error: "No answer from the server."}; })
        .then(function (data) {
          if (response.status === 409) {
            stale.hidden = false;
            stale.textContent = data.error + " (Reload the page to see it.)";
            return false;
          }
          if (!response.ok) { status.textContent = data.error || "Not saved."; return false; }
          version = data.version;
          bench.setAttribute("data-version", String(version));
          status.textContent = data.changed.length ? "Saved: " + data.changed.join("; ") : "No change.";
          reloadPreviews();
          return true;
        });
    });
  }

  function order() {
    var sections = [];
    bench.querySelectorAll(".section-item").forEach(function (section) {
      var ids = [];
      section.querySelectorAll(".entry-item").forEach(function (entry) {
        ids.push(Number(entry.getAttribute("data-id")));
      });
      sections.push({key: section.getAttribute("data-key"), entries: ids});
    });
    return {op: "order", sections: sections};
  }

  function syncSelect(entry) {
    var section = entry.closest(".entries");
    var select = entry.querySelector("select[data-act=to]");
    if (section && select) { select.value = section.getAttribute("data-key"); }
  }

  bench.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-act]");
    if (!button) { return; }
    event.preventDefault();
    var act = button.getAttribute("data-act");
    var entry = button.closest(".entry-item");
    var section = button.closest(".section-item");
    var id = entry ? Number(entry.getAttribute("data-id")) : null;
    if (act === "up" || act === "down") {
      var near = act === "up" ? entry.previousElementSibling : entry.nextElementSibling;
      if (!near) { return; }
      if (act === "up") { near.before(entry); } else { near.after(entry); }
      button.focus();
      send(order());
    } else if (act === "section-up" || act === "section-down") {
      var other = act === "section-up" ? section.previousElementSibling : section.nextElementSibling;
      if (!other) { return; }
      if (act === "section-up") { other.before(section); } else { other.after(section); }
      button.focus();
      send(order());
    } else if (act === "pin") {
      var on = button.getAttribute("aria-pressed") !== "true";
      send({op: "pin", entry: on ? id : null}).then(function (ok) {
        if (!ok) { return; }
        bench.querySelectorAll("button[data-act=pin]").forEach(function (b) { b.setAttribute("aria-pressed", "false"); });
        button.setAttribute("aria-pressed", on ? "true" : "false");
      });
    } else if (act === "image") {
      var hide = button.getAttribute("aria-pressed") !== "true";
      send({op: "image", entry: id, hidden: hide}).then(function (ok) {
        if (ok) { button.setAttribute("aria-pressed", hide ? "true" : "false"); }
      });
    } else if (act === "drop") {
      send({op: "drop", entry: id, dropped: true}).then(function (ok) { if (ok) { entry.remove(); } });
    } else if (act === "restore") {
      send({op: "drop", entry: Number(button.getAttribute("data-id")), dropped: false})
        .then(function (ok) { if (ok) { window.location.reload(); } });
    } else if (act === "text") {
      var title = document.getElementById("title-" + id).value;
      var lead = document.getElementById("lead-" + id).value;
      send({op: "text", entry: id, title: title, lead: lead}).then(function (ok) {
        if (ok) { entry.querySelector(".entry-title").textContent = title; }
      });
    } else if (act === "revert" || act === "undo") {
      send(act === "undo" ? {op: "undo"} : {op: "revert", entry: id})
        .then(function (ok) { if (ok) { window.location.reload(); } });
    }
  });

  bench.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-act=to]");
    if (!select) { return; }
    var entry = select.closest(".entry-item");
    var target = null;
    bench.querySelectorAll(".entries").forEach(function (list) {
      if (list.getAttribute("data-key") === select.value) { target = list; }
    });
    if (target) { target.appendChild(entry); send(order()); }
  });

  if (window.Sortable) {
    window.Sortable.create(document.getElementById("sections"), {
      handle: ".section-head .handle", animation: 120, forceFallback: true,
      onEnd: function () { send(order()); }
    });
    bench.querySelectorAll(".entries").forEach(function (list) {
      window.Sortable.create(list, {
        group: "entries", handle: ".entry-item > div > .handle", animation: 120,
        forceFallback: true,
        onEnd: function (event) { syncSelect(event.item); send(order()); }
      });
    });
  }
}());
