// Local times and ages on every page. The server writes times in UTC with their Unix
// seconds in data-t; this shows them in the browser's own time zone and keeps the
// "... ago" texts current. Our own code: no library, no inline script.
"use strict";
(function () {
  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const UNITS = [[365 * 86400, "y"], [86400, "d"], [3600, "h"], [60, "min"]];

  function duration(seconds) {
    const s = Math.abs(seconds);
    for (const [size, unit] of UNITS) {
      if (s >= size) return Math.floor(s / size) + " " + unit;
    }
    return Math.floor(s) + " s";
  }

  function localTimes(root) {
    for (const el of root.querySelectorAll("time.ts[data-t]")) {
      el.title = el.getAttribute("datetime");
      el.textContent = dateTime.format(new Date(Number(el.dataset.t) * 1000));
    }
  }

  function ages(root) {
    const now = Date.now() / 1000;
    for (const el of root.querySelectorAll(".age[data-t]")) {
      const text = duration(now - Number(el.dataset.t));
      el.textContent = el.classList.contains("bare") ? text : text + " ago";
    }
  }

  window.homewatch = { duration: duration };
  localTimes(document);
  ages(document);
  setInterval(function () { ages(document); }, 10000);
})();
