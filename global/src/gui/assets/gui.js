// Meridian GUI: live updates without a framework. Every REFRESH ms (the
// value of <main data-live>), fetch this page again with ?fragment=main
// (the server renders only the inside of <main>, HTML-escaped) and swap it
// in. The pages work without this script; it only keeps them current.
"use strict";
(function () {
  var main = document.querySelector("main[data-live]");
  var badge = document.getElementById("live-state");
  if (!main) {
    return;
  }
  var every = parseInt(main.getAttribute("data-live"), 10) || 2000;
  var last = null;
  function say(text) {
    if (badge) {
      badge.textContent = text;
    }
  }
  function tick() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "main");
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        // Unchanged: keep the DOM (and the reader's selection) as it is.
        // A collapsible block the reader opened (by id) stays open.
        if (html !== last) {
          var open = Array.prototype.map.call(main.querySelectorAll("details[id][open]"), function (d) {
            return d.id;
          });
          main.innerHTML = html;
          open.forEach(function (id) {
            var d = document.getElementById(id);
            if (d) {
              d.open = true;
            }
          });
          last = html;
        }
        say("live · updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) {
        say("live updates paused: " + e.message);
      })
      .then(function () {
        window.setTimeout(tick, every);
      });
  }
  say("live");
  window.setTimeout(tick, every);
})();
